"""peft adapters on a pruned model: LoRA merged with the zeros re-applied, SHiRA on kept weights, adapter-only save."""

from __future__ import annotations

import pytest
import torch

from hf_calibprune.errors import ConfigError
from hf_calibprune.recovery import (
    SparsityPreservingCallback,
    check_masks,
    extract_masks,
    lora_config_for_masks,
    measured_sparsity,
    merge_lora_preserving_sparsity,
    shira_config_for_masks,
)

from .recovery_helpers import lm_dataset, mean_loss, prune_rows, tiny_llama, train

peft = pytest.importorskip("peft")


def _fresh_pruned():
    model = tiny_llama()
    prune_rows(model)
    return model


def test_lora_merge_keeps_exact_zeros_where_plain_merge_fills_them(word_tokenizer, tmp_path):
    model = _fresh_pruned()
    masks = extract_masks(model)
    dataset = lm_dataset(word_tokenizer)
    loss_before = mean_loss(model, dataset)
    peft_model = peft.get_peft_model(model, lora_config_for_masks(masks, model, r=4))
    train(peft_model, dataset, tmp_path, steps=30, callbacks=[SparsityPreservingCallback(masks)])
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))  # the adapter alone
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").exists()

    merged = merge_lora_preserving_sparsity(peft_model, masks)
    assert not isinstance(merged, peft.PeftModel)
    assert check_masks(merged, masks) == []
    assert measured_sparsity(merged, masks) == pytest.approx(0.5)
    assert mean_loss(merged, dataset) < loss_before

    # The same adapter, reloaded from disk onto a fresh pruned base and merged the plain way, fills the zeros ...
    plain = peft.PeftModel.from_pretrained(_fresh_pruned(), str(adapter_dir)).merge_and_unload()
    assert measured_sparsity(plain, masks) < 0.01
    # ... while the sparsity-preserving merge of the reloaded adapter reproduces the merged model exactly.
    reloaded = merge_lora_preserving_sparsity(peft.PeftModel.from_pretrained(_fresh_pruned(), str(adapter_dir)))
    for name in masks:
        assert torch.equal(reloaded.get_submodule(name).weight, merged.get_submodule(name).weight)


def test_shira_trains_only_kept_weights_and_merges_with_the_zeros_intact(word_tokenizer, tmp_path):
    model = _fresh_pruned()
    masks = extract_masks(model)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in masks}
    dataset = lm_dataset(word_tokenizer)
    loss_before = mean_loss(model, dataset)
    peft_model = peft.get_peft_model(model, shira_config_for_masks(masks, model, r=4))
    for name, module in peft_model.named_modules():
        if hasattr(module, "shira_indices") and "default" in module.shira_indices:
            rows, cols = module.shira_indices["default"].long()
            key = name.removeprefix("base_model.model.")
            assert bool(masks[key][rows, cols].all())  # every trainable SHiRA position is a kept weight
    train(peft_model, dataset, tmp_path, steps=30, learning_rate=1e-2)
    adapter_dir = tmp_path / "shira"
    peft_model.save_pretrained(str(adapter_dir))

    merged = peft_model.merge_and_unload()  # peft's own merge: no re-masking involved
    assert check_masks(merged, masks) == []
    changed = sum(int((merged.get_submodule(n).weight != before[n]).sum()) for n in masks)
    assert changed > 0
    assert mean_loss(merged, dataset) < loss_before

    reloaded = peft.PeftModel.from_pretrained(_fresh_pruned(), str(adapter_dir)).merge_and_unload()
    for name in masks:
        assert torch.equal(reloaded.get_submodule(name).weight, merged.get_submodule(name).weight)


def test_shira_rank_larger_than_the_kept_weights_is_refused():
    model = _fresh_pruned()
    masks = extract_masks(model)
    with pytest.raises(ConfigError, match="r <="):
        peft.get_peft_model(model, shira_config_for_masks(masks, model, r=12))


def test_lora_on_gpt2_conv1d_keeps_zeros(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=128))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, Conv1D) and name.endswith("c_fc"):
                weight = module.weight  # [in, out]
                order = weight.abs().argsort(dim=0)[: weight.shape[0] // 2]
                weight.scatter_(0, order, 0.0)
    masks = extract_masks(model)
    assert sorted(masks) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    peft_model = peft.get_peft_model(model, lora_config_for_masks(masks, model, r=2))
    batch = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft_model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = merge_lora_preserving_sparsity(peft_model)  # masks read from the unmerged base weights
    assert check_masks(merged, masks) == []
    assert measured_sparsity(merged, masks) == pytest.approx(0.5)
