"""lm-evaluation-harness on the in-memory model with the local mirror's files (no Hub)."""

from __future__ import annotations

import math

import pytest

from hf_calibprune.evaluation import EvaluationError, evaluate_harness
from hf_calibprune.evaluation.harness import HARNESS_TASKS, local_task_config

from .conftest import SHARED_DATA

# lm_eval is in the test extra: a broken install fails these tests instead of skipping them.
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data mirror (../shared/data) not present")


@needs_data
@pytest.mark.parametrize("name", list(HARNESS_TASKS))
def test_local_config_points_at_the_mirror(name):
    config = local_task_config(name, SHARED_DATA)
    assert config["task"] == name
    assert config["dataset_path"] in ("json", "csv")
    (path,) = config["dataset_kwargs"]["data_files"].values()
    assert path.startswith(str(SHARED_DATA))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="hellaswag"):
        local_task_config("hellaswag", tmp_path)


@pytest.mark.slow
@needs_data
def test_zero_shot_tasks_run_offline(model, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = evaluate_harness(model, tokenizer, ["boolq", "openbookqa", "rte"], data_dir=SHARED_DATA, limit=3, batch_size=4)
    assert set(results) == {"boolq", "openbookqa", "rte"}
    for metrics in results.values():
        assert metrics["n"] == 3
        assert 0.0 <= metrics["acc"] <= 1.0 and math.isfinite(metrics["acc"])
