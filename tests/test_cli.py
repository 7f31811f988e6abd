"""The ``prune`` command as a user runs it: real processes, real files."""

import os
import subprocess
import sys

import pytest

from conftest import prune_command_config
from hf_calibprune.cli import COMMANDS, build_parser

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "hf_calibprune", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def test_every_command_is_registered():
    import argparse

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == COMMANDS
    assert {"prune", "calibration"} <= set(COMMANDS)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_prune_writes_a_checkpoint_transformers_loads(tiny_checkpoint, calibration_file, tmp_path, pattern):
    from transformers import AutoModelForCausalLM

    output = tmp_path / "pruned"
    result = run_cli(
        "prune", "--model", tiny_checkpoint, "--method", "wanda", "--sparsity", 0.5, "--pattern", pattern,
        "--calibration", calibration_file, "--num-samples", 4, "--seq-len", 32, "--seed", 0, "--output", output,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "model.layers.1" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(output)
    weight = model.model.layers[0].mlp.down_proj.weight
    if pattern == "2:4":
        assert ((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2).all()
    else:
        assert ((weight == 0).sum(1) == weight.shape[1] // 2).all()
    assert (output / "pruning_config.json").is_file() and (output / "pruning_report.json").is_file()


def test_bad_sparsity_fails_fast_without_output(tiny_checkpoint, tmp_path):
    output = tmp_path / "never"
    result = run_cli("prune", "--model", tiny_checkpoint, "--sparsity", 1.5, "--output", output)
    assert result.returncode != 0
    assert "sparsity" in result.stderr
    assert not output.exists()


def test_config_file_with_flag_overrides(tiny_checkpoint, calibration_file, tmp_path):
    config = tmp_path / "wanda.yaml"
    config.write_text(f"method: sparsegpt\nsparsity: 0.3\ncalibration: {calibration_file}\nnum_samples: 2\nseq_len: 16\n")
    output = tmp_path / "out"
    result = run_cli("prune", "--model", tiny_checkpoint, "--config", config, "--sparsity", 0.25, "--output", output, "--no-progress")
    assert result.returncode == 0, result.stderr
    import json

    saved = json.loads((output / "pruning_config.json").read_text())
    assert saved["method"] == "sparsegpt" and saved["sparsity"] == 0.25 and saved["num_samples"] == 2


def test_every_config_field_has_a_flag_and_a_current_docs_row():
    import dataclasses
    from pathlib import Path

    from hf_calibprune import PruningConfig
    from hf_calibprune.commands.config_flags import config_docs

    config = prune_command_config(
        "--moe-calibration", "all", "--min-expert-tokens", "7", "--strict", "--no-measure-error", "--calibration", "c4",
        "--calibration", "gsm8k", "--method-option", "block_size=64", "--method", "sparsegpt", "--owl-threshold", "4",
    )
    assert (config.moe_calibration, config.min_expert_tokens, config.strict, config.measure_error) == ("all", 7, True, False)
    assert config.calibration == ["c4", "gsm8k"] and config.method_options == {"block_size": 64}
    assert config.owl_threshold == 4.0
    docs = (Path(__file__).parents[1] / "docs" / "config.md").read_text(encoding="utf-8")
    assert docs == config_docs(), "docs/config.md is stale: run `make docs`"
    for field in dataclasses.fields(PruningConfig):
        assert f"| `{field.name}` |" in docs
