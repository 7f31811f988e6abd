"""``recover``: the one-call Trainer fine-tune (full, LoRA, SHiRA) and its data loading."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.errors import ConfigError
from hf_calibprune.recovery import check_masks, extract_masks, load_texts, recover

from .recovery_helpers import TEXTS, prune_rows, tiny_llama


@pytest.mark.parametrize(
    "options",
    [
        dict(learning_rate=3e-3),
        dict(lora=True, adapter_rank=4, learning_rate=1e-2),
        dict(shira=True, adapter_rank=4, learning_rate=1e-2),
    ],
    ids=["masked-full", "lora", "shira"],
)
def test_recover_lowers_the_loss_and_keeps_every_zero(pruned_model, word_tokenizer, tmp_path, options):
    masks = extract_masks(pruned_model)
    zeros_before = {name: pruned_model.get_submodule(name).weight == 0 for name in masks}
    adapter_dir = tmp_path / "adapter" if options.get("lora") or options.get("shira") else None
    model = recover(pruned_model, word_tokenizer, TEXTS, 30, seq_len=16, batch_size=4, adapter_dir=adapter_dir, **options)

    record = model.recovery_record
    assert type(model).__name__ == "LlamaForCausalLM"  # merged, no peft wrapper left
    assert record.steps == 30 and record.lora == bool(options.get("lora"))
    assert record.loss_after < record.loss_before
    assert record.masked_weights == sum(int(z.sum()) for z in zeros_before.values())
    assert record.sparsity == pytest.approx(0.5)
    check_masks(model, masks)
    for name, zeros in zeros_before.items():
        assert torch.equal(model.get_submodule(name).weight == 0, zeros)
    if adapter_dir is not None:
        assert (adapter_dir / "adapter_config.json").is_file()
    json.dumps(record.to_dict())


def test_recover_respects_a_real_pruning_report(word_tokenizer):
    model = tiny_llama(seed=3)
    config = PruningConfig(method="magnitude", sparsity=0.5, ignore=["mlp.down_proj"], seq_len=32, num_samples=4)
    CalibratedPruner(config, progress=False).prune(model)
    listed = {record.name for record in model.pruning_report.layers}
    masks = extract_masks(model)
    assert set(masks) == listed and not any("down_proj" in name for name in masks)
    down = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    model = recover(model, word_tokenizer, TEXTS, 10, seq_len=16, learning_rate=3e-3)
    check_masks(model, masks)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, down)


def test_load_texts_reads_txt_jsonl_and_datasets(tmp_path):
    txt = tmp_path / "data.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond one\n\n\n", encoding="utf-8")
    assert load_texts(txt) == ["first paragraph\nstill first", "second one"]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "a b"}\n\n{"text": "c"}\n', encoding="utf-8")
    assert load_texts(jsonl) == ["a b", "c"]
    assert load_texts(datasets.Dataset.from_dict({"text": ["x", ""]})) == ["x"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "a"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="content"):
        load_texts(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")


def test_recover_refuses_bad_arguments(pruned_model, word_tokenizer):
    with pytest.raises(ConfigError, match="either"):
        recover(pruned_model, word_tokenizer, TEXTS, 2, lora=True, shira=True)
    with pytest.raises(ConfigError, match="fewer than one block"):
        recover(pruned_model, word_tokenizer, ["the cat"], 2, seq_len=64)
    with pytest.raises(ConfigError, match="steps"):
        recover(pruned_model, word_tokenizer, TEXTS, 0)


def test_recover_on_a_model_with_dense_and_pruned_blocks(word_tokenizer):
    model = tiny_llama(seed=5)
    prune_rows(model, skip=("layers.1.",))  # block 1 stays dense
    masks = extract_masks(model)
    assert masks and all(name.startswith("model.layers.0.") for name in masks)
    model = recover(model, word_tokenizer, TEXTS, 5, seq_len=16, lora=True, adapter_rank=2)
    check_masks(model, masks)
