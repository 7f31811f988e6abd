"""Sparsity-preserving recovery fine-tuning: keep a pruned model's zeros through Trainer, plain PyTorch and peft.

* :func:`extract_masks` / :func:`apply_masks` / :func:`check_masks` and :class:`SparsityKeeper` for any loop;
* :class:`SparsityPreservingCallback` for :class:`transformers.Trainer`;
* :func:`merge_lora_preserving_sparsity` and a mask-aware SHiRA config (:func:`shira_config_for_masks`) for peft;
* :func:`recover`, the one-call fine-tune behind ``hf-calibprune recover``.
"""

from __future__ import annotations

from ..errors import SparsityMaskError
from .adapters import (
    kept_weights_mask_fn,
    lora_config_for_masks,
    merge_adapter_preserving_sparsity,
    merge_lora_preserving_sparsity,
    shira_config_for_masks,
)
from .callback import SparsityPreservingCallback
from .masks import (
    MaskViolation,
    SparsityKeeper,
    apply_masks,
    check_masks,
    extract_masks,
    masks_sparsity,
    measured_sparsity,
)
from .train import RecoveryRecord, build_lm_blocks, load_texts, recover

__all__ = [
    "MaskViolation",
    "RecoveryRecord",
    "SparsityKeeper",
    "SparsityMaskError",
    "SparsityPreservingCallback",
    "apply_masks",
    "build_lm_blocks",
    "check_masks",
    "extract_masks",
    "kept_weights_mask_fn",
    "load_texts",
    "lora_config_for_masks",
    "masks_sparsity",
    "measured_sparsity",
    "merge_adapter_preserving_sparsity",
    "merge_lora_preserving_sparsity",
    "recover",
    "shira_config_for_masks",
]
