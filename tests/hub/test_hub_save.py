"""save_sparse: dense and compact checkpoints, their reload, overwrite rules, interrupted saves, provenance."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hf_calibprune import PruningConfig, PruningReport, load_pruning_info, save_sparse
from hf_calibprune.errors import CheckpointError
from hf_calibprune.hub import compact

from .hub_helpers import assert_same_bits, pruned_llama, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def test_dense_checkpoint_files_and_plain_transformers_load_in_a_clean_process(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "2:4", torch.bfloat16)
    dense, compact_dir = tmp_path / "dense", tmp_path / "compact"
    assert save_sparse(model, dense, tokenizer=tokenizer) == dense
    save_sparse(model, compact_dir, format="compact")
    names = {p.name for p in dense.iterdir()}
    assert {"config.json", "model.safetensors", "pruning_config.json", "pruning_report.json", "README.md",
            "tokenizer.json"} <= names
    config = json.loads((dense / "config.json").read_text())
    assert "quantization_config" not in config and "transformers_weights" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    report = json.loads((dense / "pruning_report.json").read_text())
    assert report["pattern"] == "2:4" and report["overall_sparsity"] == pytest.approx(0.5)
    assert PruningConfig.from_dict(json.loads((dense / "pruning_config.json").read_text())).pattern == "2:4"

    # A process that never imports hf_calibprune: the dense one loads with identical weights, the compact one
    # stops with the install instruction instead of loading random weights.
    script = textwrap.dedent(
        """
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
        torch.save(model.state_dict(), sys.argv[2])
        try:
            AutoModelForCausalLM.from_pretrained(sys.argv[3])
            print("COMPACT LOADED")
        except Exception as error:
            print("COMPACT ERROR:", error)
        assert "hf_calibprune" not in sys.modules, "hf_calibprune was imported"
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(dense), str(tmp_path / "sd.pt"), str(compact_dir)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "COMPACT ERROR" in result.stdout and "pip install hf_calibprune" in result.stdout, result.stdout
    assert_same_bits(model.state_dict(), torch.load(tmp_path / "sd.pt"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_compact_checkpoint_reloads_bit_identical_through_from_pretrained(tmp_path, tokenizer, dtype, pattern):
    model = pruned_llama(tokenizer, pattern, dtype)
    save_sparse(model, tmp_path / "ckpt", format="compact", tokenizer=tokenizer)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "hf_calibprune"

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    pruned = [layer.name for layer in model.pruning_report.layers]
    assert pruned and all(f"{name}.weight" not in keys for name in pruned)
    layout = compact.NM_INDICES if pattern == "2:4" else compact.BITMASK
    assert all(f"{name}.weight{layout}" in keys for name in pruned)
    assert "model.embed_tokens.weight" in keys  # unpruned tensors stay as they are

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert_same_bits(model.state_dict(), loaded.state_dict())
    # A plain model afterwards: nothing left that makes Trainer or other loaders treat it as quantized.
    assert getattr(loaded, "hf_quantizer", None) is None and not loaded.is_quantized
    assert getattr(loaded.config, "quantization_config", None) is None
    assert "transformers_weights" not in loaded.config.to_dict()
    info = load_pruning_info(loaded)
    assert info.report.overall_sparsity == pytest.approx(model.pruning_report.overall_sparsity)


def test_compact_checkpoint_honours_from_pretrained_dtype(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "2:4", torch.bfloat16)
    save_sparse(model, tmp_path / "ckpt", format="compact")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    assert_same_bits({k: v.float() for k, v in model.state_dict().items()}, loaded.state_dict())


def test_compact_pruned_bf16_tensors_shrink_and_the_ratio_is_measured(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "unstructured", torch.bfloat16)
    save_sparse(model, tmp_path / "dense")
    save_sparse(model, tmp_path / "compact", format="compact")
    info = load_pruning_info(tmp_path / "compact")
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    compact_bytes = (tmp_path / "compact" / "model.safetensors").stat().st_size
    assert info.checkpoint["format"] == "compact"
    assert info.checkpoint["weights_bytes"] == compact_bytes
    assert info.checkpoint["size_ratio"] == pytest.approx(compact_bytes / dense_bytes, abs=1e-4)
    assert f"{info.checkpoint['size_ratio']:.4g}x the dense checkpoint" in (tmp_path / "compact" / "README.md").read_text()
    # The pruned tensors alone, measured from the file: every pruned tensor at about 0.56x.
    dense = load_file(tmp_path / "dense" / "model.safetensors")
    packed = load_file(tmp_path / "compact" / "model.safetensors")
    for layer in model.pruning_report.layers:
        key = layer.name + ".weight"
        size = sum(t.numel() * t.element_size() for k, t in packed.items() if k.startswith(key + "_sparse"))
        assert size / (dense[key].numel() * dense[key].element_size()) < 0.6, key


def test_sharded_compact_checkpoint_reloads(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "unstructured", torch.float32)
    save_sparse(model, tmp_path / "ckpt", format="compact", max_shard_size="20KB")
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    assert all(key.endswith(tuple(compact.SUFFIXES)) or not key.endswith("proj.weight") for key in index["weight_map"])
    assert_same_bits(model.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").state_dict())


def test_non_empty_target_is_refused_unless_overwrite(tmp_path, tokenizer):
    model = pruned_llama(tokenizer)
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty.*overwrite=True"):
        save_sparse(model, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    save_sparse(model, tmp_path / "empty")  # an empty directory is fine
    with pytest.raises(CheckpointError, match="Unknown checkpoint format 'compakt'.*Did you mean 'compact'"):
        save_sparse(model, tmp_path / "other", format="compakt")
    assert not (tmp_path / "other").exists()


def test_overwrite_replaces_the_checkpoint_and_keeps_the_users_readme_text(tmp_path, tokenizer):
    target = tmp_path / "out"
    save_sparse(pruned_llama(tokenizer, "2:4"), target)
    readme = (target / "README.md").read_text()
    (target / "README.md").write_text(readme.replace("---\n\n", "---\n\n# My pruned model\n\nNotes by me.\n\n", 1))
    (target / "stale.bin").write_text("old")
    model = pruned_llama(tokenizer, "unstructured")
    save_sparse(model, target, overwrite=True, format="compact")
    card = (target / "README.md").read_text()
    assert "Notes by me." in card and card.count("## Pruning (hf_calibprune)") == 1
    assert "unstructured" in card and "2:4" not in card.split("Notes by me.")[1]
    assert not (target / "stale.bin").exists()
    assert _siblings(target) == []
    assert_same_bits(model.state_dict(), AutoModelForCausalLM.from_pretrained(target).state_dict())


class _FailingTokenizer:
    def save_pretrained(self, directory):
        (Path(directory) / "tokenizer.json").write_text("{partial")
        raise RuntimeError("disk full")


def test_a_failed_save_leaves_the_old_target_untouched(tmp_path, tokenizer):
    target = tmp_path / "out"
    save_sparse(pruned_llama(tokenizer), target)
    before = _digest(target)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sparse(pruned_llama(tokenizer, "2:4"), target, overwrite=True, tokenizer=_FailingTokenizer())
    assert _digest(target) == before
    assert _siblings(target) == []


def test_a_save_killed_mid_write_leaves_the_old_target_untouched(tmp_path, tokenizer):
    target = tmp_path / "out"
    save_sparse(pruned_llama(tokenizer), target)
    before = _digest(target)
    marker = tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path[:0] = [{str(Path(__file__).parents[1])!r}, {str(Path(__file__).parent)!r}]
        from hub_helpers import tiny_llama
        from hf_calibprune import save_sparse

        class SlowTokenizer:
            def save_pretrained(self, directory):
                Path({str(marker)!r}).write_text(str(directory))
                time.sleep(120)

        save_sparse(tiny_llama(), {str(target)!r}, overwrite=True, tokenizer=SlowTokenizer())
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the save never started"
            time.sleep(0.1)
        assert Path(marker.read_text()).is_dir()  # weights are being written into the temporary sibling
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _digest(target) == before
    assert len(_siblings(target)) == 1  # the dead writer's temporary directory...
    save_sparse(pruned_llama(tokenizer, "2:4"), target, overwrite=True)
    assert _siblings(target) == []  # ...is removed by the next save into the same place
    assert load_pruning_info(target).report.pattern == "2:4"


def test_load_pruning_info_reads_back_config_and_report(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "2:4")
    save_sparse(model, tmp_path / "ckpt")
    info = load_pruning_info(tmp_path / "ckpt")
    assert isinstance(info.config, PruningConfig) and info.config.pattern == "2:4"
    assert isinstance(info.report, PruningReport)
    assert [r.name for r in info.report.layers] == [r.name for r in model.pruning_report.layers]
    assert info.checkpoint["format"] == "dense"
    from_model = load_pruning_info(model)
    assert from_model.report is model.pruning_report and from_model.config is model.pruning_config


def test_load_pruning_info_errors_are_clear(tmp_path, tokenizer):
    save_sparse(pruned_llama(tokenizer), tmp_path / "ckpt")
    report = tmp_path / "ckpt" / "pruning_report.json"
    report.write_text(report.read_text()[:50])
    with pytest.raises(CheckpointError, match="pruning_report.json is truncated or corrupted"):
        load_pruning_info(tmp_path / "ckpt")
    report.unlink()
    with pytest.raises(CheckpointError, match="pruning report not found"):
        load_pruning_info(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="carries no pruning_config"):
        load_pruning_info(tiny_llama())


def _rewrite(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def test_compact_checkpoint_with_a_missing_or_mismatched_bitmask_is_refused(tmp_path, tokenizer):
    model = pruned_llama(tokenizer)
    save_sparse(model, tmp_path / "ckpt", format="compact")
    weights = tmp_path / "ckpt" / "model.safetensors"
    key = model.pruning_report.layers[0].name + ".weight"
    original = weights.read_bytes()

    _rewrite(weights, lambda t: t.pop(key + compact.BITMASK))
    with pytest.raises(CheckpointError, match=f"'{key}'.*lacks its bitmask \\({key}{compact.BITMASK}\\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")

    weights.write_bytes(original)
    _rewrite(weights, lambda t: t.update({key + compact.BITMASK: t[key + compact.BITMASK][:-1]}))
    with pytest.raises(CheckpointError, match=f"'{key}'.*do not match its shape"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
