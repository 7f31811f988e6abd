"""The transformers plugin: prune while loading, compact reload after `import hf_calibprune`, plain models after."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from hf_calibprune import CalibratedPruner, save_sparse
from hf_calibprune.errors import ConfigError
from hf_calibprune.models.loading import load_model_and_tokenizer
from hf_calibprune.integrations import transformers_plugin

from .hub_helpers import assert_same_bits, pruned_llama, pruning_config, tiny_llama, write_tiny_gguf

REPO = Path(__file__).resolve().parents[2]


def _assert_plain(model) -> None:
    """Nothing left that makes Trainer, lm-eval or other loaders treat the model as quantized."""
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "quantization_method", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert "quantization_config" not in model.config.to_dict()


def _row_group_counts(weight: torch.Tensor, m: int) -> torch.Tensor:
    return (weight != 0).view(weight.shape[0], -1, m).sum(-1)


@pytest.fixture
def dense_dir(tmp_path, tokenizer):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_registration_is_idempotent():
    transformers_plugin.register()
    transformers_plugin.register()
    assert AUTO_QUANTIZER_MAPPING["hf_calibprune"] is transformers_plugin.CalibPruneQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["hf_calibprune"] is transformers_plugin.CompactSparseConfig


def test_from_pretrained_with_a_pruning_config_prunes_after_loading(dense_dir, tmp_path):
    config = pruning_config("2:4", "wanda")
    model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=config)
    _assert_plain(model)
    assert model.pruning_report.pattern == "2:4" and model.pruning_report.calibration is not None
    for layer in model.pruning_report.layers:
        assert (_row_group_counts(model.get_submodule(layer.name).weight, 4) == 2).all(), layer.name

    # The same as loading plainly and pruning by hand (the tokenizer came from the same directory).
    manual, tokenizer = load_model_and_tokenizer(dense_dir)
    CalibratedPruner(pruning_config("2:4", "wanda"), tokenizer=tokenizer, progress=False).prune(manual)
    assert_same_bits(manual.state_dict(), model.state_dict())

    # Trainer accepts it, and save_pretrained writes a plain checkpoint.
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], max_steps=1))
    model.save_pretrained(tmp_path / "resaved")
    assert "quantization_config" not in json.loads((tmp_path / "resaved" / "config.json").read_text())


def test_a_compact_checkpoint_loads_after_import_hf_calibprune_in_a_fresh_process(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "2:4", torch.bfloat16)
    save_sparse(model, tmp_path / "ckpt", format="compact")
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        import hf_calibprune
        from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
        assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
        Trainer(model=model, args=TrainingArguments(output_dir=sys.argv[3], report_to=[], max_steps=1))
        torch.save(model.state_dict(), sys.argv[2])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ckpt"), str(tmp_path / "loaded.pt"), str(tmp_path / "t")],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_bits(torch.load(tmp_path / "expected.pt"), torch.load(tmp_path / "loaded.pt"))


def test_pruner_from_pretrained_passes_from_pretrained_keywords(dense_dir):
    model = CalibratedPruner.from_pretrained(dense_dir, pruning_config("unstructured", "wanda"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.pruning_report.overall_sparsity == pytest.approx(0.5)
    _assert_plain(model)
    with pytest.raises(ConfigError, match="not as `quantization_config`"):
        CalibratedPruner.from_pretrained(dense_dir, pruning_config(), quantization_config=pruning_config())


def test_gguf_loads_dequantized_prunes_and_saves(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    model = CalibratedPruner.from_pretrained(tmp_path, pruning_config("2:4"), gguf_file="tiny.gguf")
    _assert_plain(model)
    assert model.pruning_report.overall_sparsity == pytest.approx(0.5)
    save_sparse(model, tmp_path / "out")
    assert_same_bits(model.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict())
