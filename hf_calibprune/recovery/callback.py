"""A :class:`transformers.TrainerCallback` that keeps a pruned model's zeros through fine-tuning."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .masks import MaskViolation, SparsityKeeper, extract_masks, masks_sparsity

__all__ = ["SparsityPreservingCallback"]

logger = logging.getLogger(__name__)


class SparsityPreservingCallback(TrainerCallback):
    """Keeps every pruned weight's sparsity mask through a :class:`~transformers.Trainer` run.

    On train begin it registers a gradient hook on each trainable pruned weight (pruned positions get a zero
    gradient on every backward pass, so gradient accumulation and optimizer moments never see them) and zeroes the
    pruned positions once; after every optimizer step it zeroes them again (decoupled weight decay, momentum or a
    custom optimizer could move them otherwise); on train end it removes the hooks and measures whether every
    pruned position is still exactly zero. Works with gradient accumulation, bf16/fp16 mixed precision and the
    accelerate-prepared (DDP) model, since hooks sit on the parameters themselves.

    ```python
    trainer = Trainer(model=pruned_model, args=args, train_dataset=ds,
                      callbacks=[SparsityPreservingCallback()])
    trainer.train()  # raises SparsityMaskError if a mask broke
    ```

    Args:
        masks (`dict[str, torch.BoolTensor]`, *optional*):
            Masks from :func:`~hf_calibprune.recovery.extract_masks`; read from the model on train begin when
            omitted. Read them *before* training when the model might already have moved (e.g. a second run).
        strict (`bool`, *optional*, defaults to `True`):
            On train end, raise :class:`~hf_calibprune.recovery.SparsityMaskError` if a mask broke; else log an
            error and keep the violations in :attr:`violations`.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None, *, strict: bool = True) -> None:
        self.masks = dict(masks) if masks is not None else None
        self.strict = strict
        self.keeper: SparsityKeeper | None = None
        self.violations: list[MaskViolation] = []
        self.steps_masked = 0
        self._saw_optimizer_step = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        if model is None:
            raise ValueError("SparsityPreservingCallback needs the Trainer to pass the model to its callbacks.")
        if self.masks is None:
            self.masks = extract_masks(model)
        if not self.masks:
            logger.warning("SparsityPreservingCallback found no pruned weights; training runs unconstrained.")
        self._saw_optimizer_step = False
        self.keeper = SparsityKeeper(model, self.masks).attach()
        logger.info(
            "Keeping %d sparsity masks (%.2f%% of their weights pruned) during training",
            len(self.masks),
            100.0 * masks_sparsity(self.masks),
        )

    def _remask(self) -> None:
        if self.keeper is not None:
            self.keeper.step()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._saw_optimizer_step = True
        self._remask()
        self.steps_masked += 1

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # A Trainer (or subclass) that never fires `on_optimizer_step` still re-masks once per step here.
        if not self._saw_optimizer_step:
            self._remask()
            self.steps_masked += 1

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.keeper is None:
            return
        keeper, self.keeper = self.keeper, None
        keeper.detach()
        self.violations = keeper.check(raise_on_violation=self.strict)
        if not self.violations:
            logger.info("All %d sparsity masks held through training", len(keeper.masks))
