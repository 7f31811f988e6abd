"""peft adapters on a pruned model whose merge keeps the zeros.

* **LoRA** learns a dense low-rank update ``B @ A``; a plain ``merge_and_unload()`` adds it everywhere and fills every
  pruned position (a 50 % sparse weight comes back 0 % sparse). :func:`merge_lora_preserving_sparsity` merges and
  then zeroes the pruned positions again, so the sparsity stays exact (the part of the update that fell on pruned
  positions is dropped, which is why a short masked fine-tune or SHiRA can be preferable).
* LoRA also adapts fused Mixture-of-Experts parameters (``experts.gate_up_proj``, 3-D ``[num_experts, ...]``)
  through peft's ``target_parameters``: one low-rank update per expert, merged and re-masked the same way.
* **SHiRA** (peft's ``ShiraConfig``) trains a sparse set of individual weights. With the mask function from
  :func:`kept_weights_mask_fn` it only ever picks kept positions, so its merge leaves the zero pattern intact by
  construction.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelStructureError
from .masks import _named_fused, _named_prunable, apply_masks, check_masks, extract_masks

__all__ = [
    "lora_config_for_masks",
    "shira_config_for_masks",
    "kept_weights_mask_fn",
    "merge_lora_preserving_sparsity",
    "merge_adapter_preserving_sparsity",
]

logger = logging.getLogger(__name__)

SHIRA_MASK_TYPE = "hf-calibprune-kept-weights"


def _uses_conv1d(model: nn.Module, names: list[str]) -> bool:
    from transformers.pytorch_utils import Conv1D

    prunable = _named_prunable(model)
    return any(isinstance(prunable[name], Conv1D) for name in names if name in prunable)


def _adapted_modules(masks: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """The masked Linear / ``Conv1D`` modules an adapter targets."""
    prunable = _named_prunable(model)
    return sorted(name for name in masks if name in prunable)


def _adapted_parameters(masks: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """The masked fused expert parameters (not modules) LoRA targets through peft's ``target_parameters``."""
    fused = _named_fused(model)
    return sorted(name for name in masks if name in fused)


def _no_targets(what: str) -> ConfigError:
    return ConfigError(
        f"No pruned {what} to adapt: `masks` is empty or names none of this model's weights. Prune the model first "
        "or pass its masks; without them train without an adapter."
    )


def lora_config_for_masks(
    masks: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    r: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    **kwargs: Any,
):
    """A :class:`peft.LoraConfig` that targets exactly the pruned modules and fused expert parameters.

    Args:
        masks (`dict[str, torch.BoolTensor]`): from :func:`~hf_calibprune.recovery.extract_masks`.
        model (`torch.nn.Module`): the pruned model (used to detect GPT-2 ``Conv1D`` layers).
        r (`int`, *optional*, defaults to 16): LoRA rank.
        lora_alpha (`int`, *optional*): LoRA scaling numerator; defaults to ``2 * r``.
        lora_dropout (`float`, *optional*, defaults to 0.0): dropout on the adapter input.
        kwargs: any other :class:`peft.LoraConfig` field.
    """
    from peft import LoraConfig

    names, parameters = _adapted_modules(masks, model), _adapted_parameters(masks, model)
    if not names and not parameters:
        raise _no_targets("Linear modules or fused expert parameters")
    if parameters:
        kwargs["target_parameters"] = parameters
    return LoraConfig(
        r=r,
        lora_alpha=2 * r if lora_alpha is None else lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=names,
        fan_in_fan_out=_uses_conv1d(model, names),
        bias="none",
        task_type="CAUSAL_LM",
        **kwargs,
    )


def kept_weights_mask_fn(
    masks: Mapping[str, torch.Tensor] | None = None,
    model: nn.Module | None = None,
    *,
    selection: str = "magnitude",
    seed: int = 0,
) -> Callable[..., torch.Tensor]:
    """A SHiRA ``mask_fn`` that picks its ``r * (in + out)`` trainable positions among the kept weights only.

    peft calls ``mask_fn(base_layer, r, **kwargs)`` for each target layer (see ``peft/tuners/shira/mask_functions.py``);
    the returned 0/1 tensor has the weight's shape, dtype and device and exactly ``r * (in + out)`` ones.

    Args:
        masks (`dict[str, torch.BoolTensor]`, *optional*):
            Masks keyed by module name; with ``model`` they are matched to layers by identity. Without them a
            layer's kept positions are its non-zero weights.
        model (`torch.nn.Module`, *optional*): the model ``masks`` were extracted from.
        selection (`str`, *optional*, defaults to `"magnitude"`):
            ``"magnitude"`` takes the largest kept weights (SHiRA-WM), ``"random"`` a seeded random subset.
        seed (`int`, *optional*, defaults to 0): seed for ``selection="random"``.
    """
    if selection not in ("magnitude", "random"):
        raise ConfigError(f"`selection='{selection}'` is not supported; pass 'magnitude' or 'random'.")
    by_module: dict[int, tuple[str, torch.Tensor]] = {}
    if masks is not None and model is not None:
        prunable = _named_prunable(model)
        by_module = {id(prunable[name]): (name, mask) for name, mask in masks.items() if name in prunable}

    def mask_fn(base_layer: nn.Module, r: int, **kwargs: Any) -> torch.Tensor:
        weight = base_layer.weight
        name, kept = by_module.get(id(base_layer), (type(base_layer).__name__, None))
        if kept is None:
            kept = weight.detach() != 0
        kept = kept.to(weight.device)
        out_features, in_features = weight.shape
        wanted = r * (in_features + out_features)
        available = int(kept.sum())
        if wanted > available:
            raise ConfigError(
                f"SHiRA r={r} trains {wanted} weights of {name} but only {available} are kept; pass "
                f"r <= {available // (in_features + out_features)}."
            )
        if selection == "magnitude":
            scores = weight.detach().abs().float()
        else:
            generator = torch.Generator().manual_seed(seed)
            scores = torch.rand(weight.shape, generator=generator).to(weight.device)
        scores = scores.masked_fill(~kept, -1.0)  # every kept score is >= 0
        chosen = torch.topk(scores.flatten(), wanted).indices
        mask = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
        mask[chosen] = 1
        return mask.view_as(weight)

    return mask_fn


def shira_config_for_masks(
    masks: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    r: int = 8,
    selection: str = "magnitude",
    seed: int = 0,
    **kwargs: Any,
):
    """A :class:`peft.ShiraConfig` on the pruned modules whose trainable positions are kept weights only.

    Args:
        masks (`dict[str, torch.BoolTensor]`): from :func:`~hf_calibprune.recovery.extract_masks`.
        model (`torch.nn.Module`): the model the masks come from (before ``get_peft_model``).
        r (`int`, *optional*, defaults to 8): SHiRA size; each layer trains ``r * (in + out)`` weights.
        selection (`str`, *optional*, defaults to `"magnitude"`): see :func:`kept_weights_mask_fn`.
        seed (`int`, *optional*, defaults to 0): see :func:`kept_weights_mask_fn`.
        kwargs: any other :class:`peft.ShiraConfig` field.
    """
    from peft import ShiraConfig

    names = _adapted_modules(masks, model)
    if not names:
        raise _no_targets("Linear modules (SHiRA adapts Linear modules only; use LoRA for fused experts)")
    if _uses_conv1d(model, names):
        raise ModelStructureError(
            "peft's SHiRA supports nn.Linear only, and this model's pruned layers are GPT-2 Conv1D; use LoRA "
            "(`lora=True`) instead."
        )
    with warnings.catch_warnings():
        # ShiraConfig warns that a custom mask_type needs `config.mask_fn`, which is set right below.
        warnings.simplefilter("ignore")
        config = ShiraConfig(r=r, mask_type=SHIRA_MASK_TYPE, target_modules=names, **kwargs)
    config.mask_fn = kept_weights_mask_fn(masks, model, selection=selection, seed=seed)
    return config


def _any_merged(peft_model: nn.Module) -> bool:
    return any(bool(getattr(module, "merged", False)) for module in peft_model.modules() if hasattr(module, "merged"))


def merge_adapter_preserving_sparsity(
    peft_model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """Merge a peft adapter into its pruned base model, then zero every pruned position again.

    Args:
        peft_model (`peft.PeftModel`): an unmerged peft model over a pruned base model.
        masks (`dict[str, torch.BoolTensor]`, *optional*):
            The pruned model's masks; read from the (still unmerged) base weights when omitted.

    Returns:
        `torch.nn.Module`: the merged base model; every masked weight has exactly its original zeros.
    """
    if masks is None:
        if _any_merged(peft_model):
            raise ModelStructureError(
                "The adapter is already merged, so the base weights no longer show which positions were pruned; "
                "pass the masks you extracted before training."
            )
        masks = extract_masks(peft_model)
    merged = peft_model.merge_and_unload()
    refilled = apply_masks(merged, masks)
    check_masks(merged, masks)
    logger.info("Merged the adapter; zeroed %d pruned positions it had filled", refilled)
    return merged


def merge_lora_preserving_sparsity(
    peft_model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """Merge LoRA into a pruned model keeping its sparsity exact.

    A plain ``peft_model.merge_and_unload()`` adds the dense ``B @ A`` update to every position and so fills the
    zeros; this merges and re-applies the masks (the update's share on pruned positions is dropped).

    Args:
        peft_model (`peft.PeftModel`): an unmerged LoRA model over a pruned base model.
        masks (`dict[str, torch.BoolTensor]`, *optional*):
            The pruned model's masks; read from the (still unmerged) base weights when omitted.

    Returns:
        `torch.nn.Module`: the merged base model with exactly the zeros it had before the adapter.
    """
    return merge_adapter_preserving_sparsity(peft_model, masks)
