"""SparsityPreservingCallback under a real Trainer: loss falls, masks hold, dense weights move, breakage is caught."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from hf_calibprune.recovery import SparsityMaskError, SparsityPreservingCallback, check_masks, extract_masks

from .recovery_helpers import lm_dataset, mean_loss, train


def _hooks(model, masks) -> int:
    return sum(len(model.get_submodule(name).weight._backward_hooks or {}) for name in masks)


def test_trainer_loss_falls_and_every_mask_holds(pruned_model, word_tokenizer, tmp_path):
    dataset = lm_dataset(word_tokenizer)
    masks = extract_masks(pruned_model)
    dense = pruned_model.model.layers[1].mlp.down_proj.weight.detach().clone()
    kept_before = {name: pruned_model.get_submodule(name).weight.detach().clone() for name in masks}
    loss_before = mean_loss(pruned_model, dataset)
    callback = SparsityPreservingCallback()  # reads the masks from the model on train begin
    train(pruned_model, dataset, tmp_path, steps=40, callbacks=[callback])

    assert mean_loss(pruned_model, dataset) < loss_before - 0.5
    assert check_masks(pruned_model, masks) == []
    for name, mask in masks.items():
        weight = pruned_model.get_submodule(name).weight
        assert torch.equal(weight != 0, mask)  # exactly the same zeros, and the kept weights are not killed
        assert not torch.equal(weight, kept_before[name])  # the kept weights trained
    assert not torch.equal(pruned_model.model.layers[1].mlp.down_proj.weight, dense)  # never pruned: left free
    assert sorted(callback.masks) == sorted(masks)
    assert callback.steps_masked == 40 and callback.violations == []
    assert _hooks(pruned_model, masks) == 0  # hooks removed on train end


def test_without_the_callback_the_same_run_breaks_the_masks(pruned_model, word_tokenizer, tmp_path):
    masks = extract_masks(pruned_model)
    train(pruned_model, lm_dataset(word_tokenizer), tmp_path, steps=3)
    assert len(check_masks(pruned_model, masks, raise_on_violation=False)) == len(masks)


def test_gradient_accumulation_with_bf16_autocast(pruned_model, word_tokenizer, tmp_path):
    dataset = lm_dataset(word_tokenizer)
    masks = extract_masks(pruned_model)
    loss_before = mean_loss(pruned_model, dataset)
    callback = SparsityPreservingCallback(masks)
    trainer = train(
        pruned_model, dataset, tmp_path, steps=15, callbacks=[callback], gradient_accumulation_steps=3,
        per_device_train_batch_size=2, bf16=True,
    )
    assert trainer.state.global_step == 15 and callback.steps_masked == 15
    assert mean_loss(pruned_model, dataset) < loss_before
    check_masks(pruned_model, masks)
    for name, mask in masks.items():
        assert pruned_model.get_submodule(name).weight.dtype == torch.float32
        assert torch.equal(pruned_model.get_submodule(name).weight != 0, mask)


class _BreakAtEnd(TrainerCallback):
    """Writes a non-zero into a pruned position on train end, before the sparsity check runs."""

    def __init__(self, name, position):
        self.name, self.position = name, position

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.get_submodule(self.name).weight[self.position] = 1.0


def test_a_broken_mask_is_detected_at_train_end(pruned_model, word_tokenizer, tmp_path):
    masks = extract_masks(pruned_model)
    name = sorted(masks)[0]
    position = tuple((~masks[name]).nonzero()[0].tolist())
    breaker = _BreakAtEnd(name, position)
    with pytest.raises(SparsityMaskError, match=name):
        train(pruned_model, lm_dataset(word_tokenizer), tmp_path, steps=2, callbacks=[breaker, SparsityPreservingCallback(masks)])

    lenient = SparsityPreservingCallback(masks, strict=False)
    train(pruned_model, lm_dataset(word_tokenizer), tmp_path, steps=2, callbacks=[breaker, lenient])
    assert [(v.name, v.nonzero) for v in lenient.violations] == [(name, 1)]
