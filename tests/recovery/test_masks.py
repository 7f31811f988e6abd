"""Masks: extraction rules, re-masking, gradient masking in a plain PyTorch loop, violation detection."""

from __future__ import annotations

import pytest
import torch

from hf_calibprune.errors import ModelStructureError
from hf_calibprune.recovery import (
    SparsityKeeper,
    SparsityMaskError,
    apply_masks,
    check_masks,
    extract_masks,
    masks_sparsity,
    measured_sparsity,
)

from .recovery_helpers import prune_rows, tiny_llama


def test_extract_masks_finds_exactly_the_pruned_block_linears(pruned_model):
    masks = extract_masks(pruned_model)
    assert sorted(masks) == sorted(pruned_model.pruned_names)
    assert not any("down_proj" in name for name in masks)  # dense: left free
    assert "lm_head" not in masks
    for name, mask in masks.items():
        weight = pruned_model.get_submodule(name).weight
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        assert torch.equal(mask, weight != 0)
    assert masks_sparsity(masks) == pytest.approx(0.5)


def test_extract_masks_follows_the_pruning_report(pruned_model):
    listed = [name for name in pruned_model.pruned_names if "self_attn" in name]
    report = {"layers": [{"name": name} for name in listed]}
    assert sorted(extract_masks(pruned_model, report=report)) == sorted(listed)
    pruned_model.pruning_report = report
    assert sorted(extract_masks(pruned_model)) == sorted(listed)


def test_extract_masks_with_explicit_modules_and_a_typo(pruned_model):
    masks = extract_masks(pruned_model, modules=["model.layers.0.mlp.down_proj"])
    assert list(masks) == ["model.layers.0.mlp.down_proj"] and bool(masks["model.layers.0.mlp.down_proj"].all())
    with pytest.raises(ModelStructureError, match="down_proj"):
        extract_masks(pruned_model, modules=["model.layers.0.mlp.down_prj"])


def test_extract_masks_of_a_dense_model_is_empty():
    assert extract_masks(tiny_llama()) == {}


def test_apply_masks_and_check_masks_detect_and_repair(pruned_model):
    masks = extract_masks(pruned_model)
    name = sorted(masks)[0]
    weight = pruned_model.get_submodule(name).weight
    position = (~masks[name]).nonzero()[0].tolist()
    with torch.no_grad():
        weight[position[0], position[1]] = 0.25
    with pytest.raises(SparsityMaskError, match=name):
        check_masks(pruned_model, masks)
    assert [v.name for v in check_masks(pruned_model, masks, raise_on_violation=False)] == [name]
    assert apply_masks(pruned_model, masks) == 1
    assert check_masks(pruned_model, masks) == []
    assert measured_sparsity(pruned_model, masks) == pytest.approx(0.5)


def test_keeper_in_a_plain_loop_keeps_zeros_with_weight_decay(pruned_model):
    masks = extract_masks(pruned_model)
    dense_before = pruned_model.model.layers[0].mlp.down_proj.weight.detach().clone()
    optimizer = torch.optim.AdamW(pruned_model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    keeper = SparsityKeeper(pruned_model, masks)
    with keeper:
        assert keeper.attached
        for _ in range(5):
            pruned_model(input_ids=batch, labels=batch).loss.backward()
            for name in masks:  # the gradient hook already zeroed the pruned positions
                grad = pruned_model.get_submodule(name).weight.grad
                assert grad is not None and not bool(grad[~masks[name]].any())
            optimizer.step()
            # Masked gradients alone keep AdamW (with decoupled weight decay) off the pruned positions.
            assert keeper.step(count=True) == 0
            optimizer.zero_grad()
    assert not keeper.attached
    keeper.check()
    assert not torch.equal(pruned_model.model.layers[0].mlp.down_proj.weight, dense_before)


def test_without_the_keeper_training_fills_the_zeros(pruned_model):
    # The control for the test above: the masks do break when nothing keeps them.
    masks = extract_masks(pruned_model)
    optimizer = torch.optim.AdamW(pruned_model.parameters(), lr=1e-2)
    batch = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    pruned_model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    assert len(check_masks(pruned_model, masks, raise_on_violation=False)) == len(masks)


def test_keeper_with_accelerate_and_gradient_accumulation():
    from accelerate import Accelerator

    model = tiny_llama(seed=1)
    prune_rows(model)
    masks = extract_masks(model)
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(1)
    with SparsityKeeper(prepared, masks) as keeper:
        for _ in range(6):
            batch = torch.randint(0, 128, (2, 16), generator=generator)
            with accelerator.accumulate(prepared):
                accelerator.backward(prepared(input_ids=batch, labels=batch).loss)
                optimizer.step()
                keeper.step()
                optimizer.zero_grad()
    check_masks(accelerator.unwrap_model(prepared), masks)
