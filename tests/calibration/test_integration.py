"""Every source with a copy in ../shared/data builds from it through ``data_dir`` (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hf_calibprune.calibration import CalibrationConfig, build_calibration_samples, render_samples

SHARED = Path(os.environ.get("HF_CALIBPRUNE_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED / "gsm8k" / "train.jsonl").is_file(), reason="../shared/data is not available"),
]

SPECS = [
    "c4", "wikitext2", "gsm8k:icl", "gsm8k:cot", "svamp:icl", "svamp:cot", "mawps:single", "esnli:cot",
    "anli_r1:cot", "commonsense_qa:zero", "commonsense_qa:cot", "race:icl", "winogrande:icl", "rte:single", "boolq:icl",
]


@pytest.mark.parametrize("spec", SPECS)
def test_shared_data_builds(spec, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = CalibrationConfig(sources=spec, data_dir=str(SHARED))
    samples = build_calibration_samples(config, tokenizer, num_samples=2, seq_len=48, seed=0)
    assert samples.input_ids.shape == (2, 48)
    [entry] = samples.fingerprint["sources"]
    assert entry["origin"] == "local" and all(Path(f).is_relative_to(SHARED.resolve()) for f in entry["files"])


def test_shared_rationale_files_align(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    svamp = render_samples("svamp", "cot", 3, data_dir=str(SHARED), seed=0)
    assert all("\nAnswer: " in t and ". So the answer is (" in t for t in svamp)
    cqa = render_samples("commonsense_qa", "cot", 3, data_dir=str(SHARED), seed=0)
    assert all("\nChoices:\nA. " in t and t.rstrip(".")[-1] in "ABCDE" for t in cqa)


def test_issue_mixture_on_shared_data(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = CalibrationConfig(sources={"gsm8k": 0.5, "c4": 0.5}, format="icl", shots=3, data_dir=str(SHARED))
    first = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=256, seed=0)
    second = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=256, seed=0)
    assert torch.equal(first.input_ids, second.input_ids)
    assert [e["num_samples"] for e in first.fingerprint["sources"]] == [2, 2]
