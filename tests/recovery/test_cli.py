"""``python -m hf_calibprune recover`` end to end in a real subprocess on a tiny saved checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_calibprune.errors import CheckpointError
from hf_calibprune.recovery.checkpoint import recover_checkpoint

from .recovery_helpers import TEXTS, build_tokenizer, prune_rows, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "hf_calibprune", "recover", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def pruned_dir(tmp_path):
    model = tiny_llama(seed=7)
    pruned = prune_rows(model)
    directory = tmp_path / "pruned"
    model.save_pretrained(str(directory))
    build_tokenizer().save_pretrained(str(directory))
    layers = [{"name": name} for name in pruned]
    (directory / "pruning_report.json").write_text(json.dumps({"method": "test", "layers": layers}), encoding="utf-8")
    (directory / "pruning_config.json").write_text(json.dumps({"method": "test", "sparsity": 0.5}), encoding="utf-8")
    return directory


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def test_recover_cli_lora_writes_a_merged_checkpoint_with_every_zero_kept(pruned_dir, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("\n\n".join(TEXTS), encoding="utf-8")
    output = tmp_path / "recovered"
    result = _run(str(pruned_dir), "--data", str(data), "--steps", "20", "--lora", "--output", str(output),
                  "--lr", "1e-2", "--seq-len", "16", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]

    before, after = _weights(pruned_dir), _weights(output)
    assert set(before) == set(after)
    pruned_zeros = 0
    for name, tensor in before.items():
        zeros = tensor == 0
        assert not bool(after[name][zeros].any()), name  # every zero of PRUNED_DIR is still zero
        pruned_zeros += int(zeros.sum())
    assert pruned_zeros > 0
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the merge changed kept weights
    assert not any(name.startswith("base_model") or "lora" in name for name in after)  # merged, not an adapter

    report = json.loads((output / "pruning_report.json").read_text(encoding="utf-8"))
    (record,) = report["recovery"]
    assert record["lora"] is True and record["steps"] == 20
    assert record["loss_after"] < record["loss_before"]
    assert report["layers"] == json.loads((pruned_dir / "pruning_report.json").read_text(encoding="utf-8"))["layers"]
    assert json.loads((output / "pruning_config.json").read_text(encoding="utf-8"))["sparsity"] == 0.5
    assert json.loads(result.stdout)["lora"] is True

    # The output loads with plain transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(str(output))
    AutoModelForCausalLM.from_pretrained(str(output))

    # A second run may not clobber the output silently (checked before any training).
    with pytest.raises(CheckpointError, match="overwrite"):
        recover_checkpoint(pruned_dir, data, output, 1)


def test_recover_checkpoint_masked_full_finetune_from_jsonl(pruned_dir, tmp_path):
    # The same path in process (the subprocess above covers the command line), without an adapter.
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS), encoding="utf-8")
    output = tmp_path / "full"
    record = recover_checkpoint(pruned_dir, data, output, 10, learning_rate=3e-3, seq_len=16)
    assert record.adapter == "none" and record.loss_after < record.loss_before
    before, after = _weights(pruned_dir), _weights(output)
    for name, tensor in before.items():
        if name.endswith("_proj.weight") and bool((tensor == 0).any()):
            assert torch.equal(after[name] == 0, tensor == 0), name
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])
    record = json.loads((output / "pruning_report.json").read_text(encoding="utf-8"))["recovery"][-1]
    assert record["adapter"] == "none" and record["lora"] is False
