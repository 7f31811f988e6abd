"""Sparsity masks of a pruned model: find them, keep them through training, check them.

A mask is a ``torch.BoolTensor`` with the shape of the weight it masks, ``True`` where the weight is kept and
``False`` where it was pruned. A Linear's mask has the shape of its ``weight`` (``[out, in]`` for ``nn.Linear``,
``[in, out]`` for GPT-2's ``Conv1D``) and is keyed by the module's name in the *base* model
(``model.layers.0.mlp.up_proj``); a fused Mixture-of-Experts parameter's mask has its 3-D shape and is keyed by
the parameter's name (``model.layers.0.mlp.experts.gate_up_proj``). Names of a peft-wrapped model
(``base_model.model.<name>.base_layer``) or of a DDP-wrapped one (``module.<name>``) resolve to the same keys, so
one mask dict serves the model before, during and after adapter training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ModelStructureError, SparsityMaskError
from ..models import find_decoder_layout, fused_parameter_of, is_prunable_linear
from ..registry import suggest
from ..sparsity import count_zeros

__all__ = [
    "SparsityKeeper",
    "MaskViolation",
    "extract_masks",
    "full_masks",
    "is_structurally_pruned",
    "apply_masks",
    "check_masks",
    "masks_sparsity",
    "masked_parameter_names",
    "measured_sparsity",
    "normalize_module_name",
]

logger = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("base_model.model.", "module.", "_orig_mod.")


def normalize_module_name(name: str) -> str:
    """Map a module or parameter name of a wrapped model to the name it has in the plain base model.

    Strips peft's ``base_model.model.`` prefix, DDP's ``module.``, ``torch.compile``'s ``_orig_mod.`` and every
    ``.base_layer`` component that peft tuner layers insert.
    """
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    parts = [part for part in name.split(".") if part != "base_layer"]
    return ".".join(parts)


def _is_prunable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return is_prunable_linear(module) and isinstance(weight, torch.Tensor) and weight.dim() == 2


def _decoder_block_prefixes(model: nn.Module) -> list[str]:
    """Normalized names of the decoder blocks (``model.layers.0`` ...)."""
    layout = find_decoder_layout(model)
    base = normalize_module_name(layout.prefix)
    return [f"{base}.{index}" if base else str(index) for index in range(len(layout.blocks))]


def _report_layer_names(report: Any) -> list[str] | None:
    if report is None:
        return None
    layers = report.get("layers") if isinstance(report, Mapping) else getattr(report, "layers", None)
    if not layers:
        return None
    names = []
    for record in layers:
        name = record.get("name") if isinstance(record, Mapping) else getattr(record, "name", None)
        if name:
            names.append(normalize_module_name(str(name)))
    return names or None


def _listed(name: str, listed: Iterable[str]) -> bool:
    return any(name == other or name.endswith("." + other) or other.endswith("." + name) for other in listed)


def _is_adapter_layer(module: nn.Module) -> bool:
    # peft tuner layers (LoraLayer, ShiraLayer, ...) wrap the original module as `base_layer`; their other
    # Linears (lora_A, lora_B, ...) are adapter weights, never pruned weights.
    return isinstance(getattr(module, "base_layer", None), nn.Module) and hasattr(module, "merged")


def _named_prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Prunable 2-D modules of ``model`` keyed by normalized name, skipping peft adapter weights."""
    adapters = [name for name, module in model.named_modules() if _is_adapter_layer(module)]
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not _is_prunable(module):
            continue
        inside = [a for a in adapters if name.startswith(a + ".")]
        if any(not name.startswith(a + ".base_layer") for a in inside):
            continue
        found.setdefault(normalize_module_name(name), module)
    return found


def _named_fused(model: nn.Module) -> dict[str, nn.Parameter]:
    """Fused expert parameters (3-D ``[num_experts, ...]``) of the decoder blocks, keyed by normalized name."""
    try:
        layout = find_decoder_layout(model)
    except ModelStructureError:
        return {}
    found = {}
    for prefix, block in zip(_decoder_block_prefixes(model), layout.blocks):
        # find_fused_experts' rule (3-D non-bias parameters of a child named `experts`), on normalized names so
        # that it also sees through peft's wrappers of LoRA-adapted expert parameters.
        for name, parameter in block.named_parameters():
            owner, _, attribute = normalize_module_name(name).rpartition(".")
            if parameter.dim() == 3 and not attribute.endswith("bias") and owner.rpartition(".")[2] == "experts":
                found[normalize_module_name(f"{prefix}.{owner}.{attribute}")] = parameter
    return found


def _named_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every maskable weight: prunable Linear weights by module name, fused expert parameters by their own name."""
    weights = {name: module.weight for name, module in _named_prunable(model).items()}
    weights.update(_named_fused(model))
    return weights


def masked_parameter_names(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[str]:
    """The base model's parameter names that ``masks`` mask (``<module>.weight`` for a Linear, the parameter's own
    name for fused experts)."""
    linears = _named_prunable(model)
    return [f"{name}.weight" if name in linears else name for name in masks]


def extract_masks(
    model: nn.Module, modules: Iterable[str] | None = None, *, report: Any = None
) -> dict[str, torch.BoolTensor]:
    """Read the sparsity masks of the pruned weights of a model.

    A weight counts as pruned when it is an ``nn.Linear`` / ``Conv1D`` weight or a fused Mixture-of-Experts
    parameter (``experts.gate_up_proj``, ``experts.down_proj``) inside a decoder block, it holds at least one exact
    zero, and, when the model carries a ``pruning_report`` (set by :class:`~hf_calibprune.CalibratedPruner`), the
    report lists it (a fused parameter is listed through its experts' matrices, ``experts.gate_up_proj[3].gate``).
    Weights that were never pruned get no mask and stay free to train.

    Args:
        model (`torch.nn.Module`):
            The pruned model; a peft- or DDP-wrapped model works too (names are normalized).
        modules (`Iterable[str]`, *optional*):
            Restrict the masks to these names (base-model names: modules such as ``model.layers.0.mlp.up_proj``,
            fused expert parameters such as ``model.layers.0.mlp.experts.down_proj``). Each must name a prunable
            weight; the decoder-block and report filters do not apply to them.
        report (`PruningReport` or `dict`, *optional*):
            The pruning report (object or its JSON dict) whose ``layers`` name the pruned weights; defaults to
            ``model.pruning_report`` when the model has one.

    Returns:
        `dict[str, torch.BoolTensor]`: name → mask (``True`` = kept), on the weight's device.
    """
    weights = _named_weights(model)
    if modules is not None:
        selected = {}
        for name in modules:
            key = normalize_module_name(name)
            if key not in weights:
                raise ModelStructureError(
                    f"'{name}' is not a Linear/Conv1D module or fused experts parameter of this model."
                    f"{suggest(key, list(weights))} Pass names as printed by `model.named_modules()` (or "
                    "`named_parameters()` for fused experts) on the unwrapped model."
                )
            selected[key] = weights[key]
    else:
        blocks = _decoder_block_prefixes(model)
        listed = _report_layer_names(report if report is not None else getattr(model, "pruning_report", None))
        if listed is not None:
            listed = listed + [parameter for parameter in map(fused_parameter_of, listed) if parameter is not None]
        selected = {
            name: weight
            for name, weight in weights.items()
            if any(name.startswith(block + ".") for block in blocks) and (listed is None or _listed(name, listed))
        }
    masks: dict[str, torch.BoolTensor] = {}
    for name, weight in selected.items():
        with torch.no_grad():
            mask = weight.detach() != 0
        if modules is None and bool(mask.all()):
            continue  # a dense weight that was never pruned: leave it free
        masks[name] = mask
    logger.debug("Extracted %d sparsity masks", len(masks))
    return masks


def full_masks(model: nn.Module) -> dict[str, torch.BoolTensor]:
    """All-``True`` masks for every Linear and fused experts parameter of the decoder blocks.

    A structurally pruned model (heads, channels, blocks or experts removed) has no zeros to keep; these masks
    let an adapter target every decoder Linear and fused experts parameter and merge in full.
    """
    blocks = _decoder_block_prefixes(model)
    names = [name for name in _named_weights(model) if any(name.startswith(block + ".") for block in blocks)]
    return extract_masks(model, modules=names)


def is_structurally_pruned(report: Any) -> bool:
    """Whether a pruning report (object or dict) comes from a structured pattern (``"channels"``, ``"blocks"``)."""
    structure = report.get("structure") if isinstance(report, Mapping) else getattr(report, "structure", None)
    return bool(structure)


def masks_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of zeros over all masked weights (0.0 for no masks)."""
    total = sum(mask.numel() for mask in masks.values())
    kept = sum(int(mask.sum()) for mask in masks.values())
    return 0.0 if total == 0 else 1.0 - kept / total


def measured_sparsity(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of exact zeros in the model's masked weights, as they are now (0.0 for no masks)."""
    total = zeros = 0
    with torch.no_grad():
        for weight in _resolve_weights(model, masks).values():
            total += weight.numel()
            zeros += count_zeros(weight)
    return 0.0 if total == 0 else zeros / total


def _resolve_weights(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    available = _named_weights(model)
    missing = [name for name in masks if name not in available]
    if missing:
        raise ModelStructureError(
            f"{len(missing)} masked weight(s) are not in this model, e.g. '{missing[0]}'."
            f"{suggest(missing[0], list(available))} Extract the masks from the same model architecture."
        )
    weights = {}
    for name, mask in masks.items():
        weight = available[name]
        if tuple(weight.shape) != tuple(mask.shape):
            raise ModelStructureError(
                f"Mask of '{name}' has shape {tuple(mask.shape)} but the weight has {tuple(weight.shape)}; "
                "masks must come from the same (unmerged, unsharded) model."
            )
        weights[name] = weight
    return weights


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> int:
    """Zero every masked-out position of the model's weights in place.

    Use it after each ``optimizer.step()`` of a plain PyTorch / accelerate training loop (or use
    :class:`SparsityKeeper`, which also masks the gradients).

    Args:
        model (`torch.nn.Module`): the model (plain, peft- or DDP-wrapped).
        masks (`dict[str, torch.BoolTensor]`): from :func:`extract_masks`.

    Returns:
        `int`: how many positions were non-zero before and are zero now.
    """
    changed = 0
    with torch.no_grad():
        for name, weight in _resolve_weights(model, masks).items():
            mask = masks[name].to(weight.device)
            changed += int(torch.count_nonzero(weight.masked_select(~mask)))
            weight.masked_fill_(~mask, 0)
    return changed


@dataclass(frozen=True)
class MaskViolation:
    """A weight whose pruned positions are not all zero.

    Args:
        name (`str`): module name.
        nonzero (`int`): pruned positions holding a non-zero value.
        pruned (`int`): positions the mask prunes.
    """

    name: str
    nonzero: int
    pruned: int


def check_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor], *, raise_on_violation: bool = True
) -> list[MaskViolation]:
    """Measure whether every pruned position is still exactly zero.

    Args:
        model (`torch.nn.Module`): the model (plain, peft- or DDP-wrapped).
        masks (`dict[str, torch.BoolTensor]`): from :func:`extract_masks`.
        raise_on_violation (`bool`, *optional*, defaults to `True`):
            Raise :class:`SparsityMaskError` when a mask broke; else log an error and return the violations.

    Returns:
        `list[MaskViolation]`: empty when every mask holds.
    """
    violations = []
    with torch.no_grad():
        for name, weight in _resolve_weights(model, masks).items():
            pruned = ~masks[name].to(weight.device)
            nonzero = int(torch.count_nonzero(weight.masked_select(pruned)))
            if nonzero:
                violations.append(MaskViolation(name, nonzero, int(pruned.sum())))
    if violations:
        head = ", ".join(f"{v.name} ({v.nonzero}/{v.pruned})" for v in violations[:5])
        message = (
            f"{len(violations)} pruned weight(s) lost their sparsity: {head}"
            f"{' …' if len(violations) > 5 else ''}. Re-apply the masks with `apply_masks(model, masks)` after "
            "every optimizer step (SparsityPreservingCallback does it for Trainer)."
        )
        if raise_on_violation:
            raise SparsityMaskError(message)
        logger.error(message)
    return violations


@dataclass
class SparsityKeeper:
    """Keeps a model's pruned weights pruned during a training loop.

    It masks each pruned weight's gradient (a tensor hook, so gradient accumulation and optimizer moments never see
    the pruned positions) and, through :meth:`step`, zeroes the pruned positions again after each optimizer step
    (weight decay, momentum from an earlier run or a custom optimizer can move them otherwise). Hooks are
    registered by :meth:`attach` and removed by :meth:`detach`; use it as a context manager to do both.

    ```python
    keeper = SparsityKeeper(model, extract_masks(model))
    with keeper:
        for batch in loader:
            model(**batch).loss.backward()
            optimizer.step()
            keeper.step()
            optimizer.zero_grad()
    keeper.check()
    ```

    Args:
        model (`torch.nn.Module`): the model being trained (plain, peft- or DDP-wrapped).
        masks (`dict[str, torch.BoolTensor]`): from :func:`extract_masks`.
    """

    model: nn.Module
    masks: Mapping[str, torch.Tensor]
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)
    _device_masks: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _weights: dict[str, nn.Parameter] | None = field(default=None, init=False, repr=False)

    def attach(self) -> SparsityKeeper:
        """Register the gradient hooks on every trainable masked weight and zero the pruned positions once."""
        self.detach()
        self._weights = _resolve_weights(self.model, self.masks)
        for name, weight in self._weights.items():
            if weight.requires_grad:  # a weight frozen under an adapter cannot move
                self._handles.append(weight.register_hook(_gradient_mask(self._pruned(name, weight))))
        self.step(frozen=True)
        return self

    def detach(self) -> None:
        """Remove every hook this keeper registered."""
        while self._handles:
            self._handles.pop().remove()
        self._weights = None

    def _pruned(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        # Cached on the weight's device: the Trainer may have moved the model after the masks were read.
        cached = self._device_masks.get(name)
        if cached is None or cached.device != weight.device:
            cached = self._device_masks[name] = ~self.masks[name].to(weight.device)
        return cached

    def step(self, count: bool = False, frozen: bool = False) -> int:
        """Zero the pruned positions again (call after ``optimizer.step()``).

        Args:
            count (`bool`, *optional*, defaults to `False`): also count how many pruned positions had moved
                (a device sync per weight, so off in the training loop).
            frozen (`bool`, *optional*, defaults to `False`): also re-mask weights with ``requires_grad=False``
                (an optimizer cannot move them, so they are skipped by default; under an adapter that is all
                of them).

        Returns:
            `int`: the positions that had moved, or 0 when not counted.
        """
        changed = 0
        weights = self._weights if self._weights is not None else _resolve_weights(self.model, self.masks)
        with torch.no_grad():
            for name, weight in weights.items():
                if not (frozen or weight.requires_grad):
                    continue
                pruned = self._pruned(name, weight)
                if count:
                    changed += int(torch.count_nonzero(weight.masked_select(pruned)))
                weight.masked_fill_(pruned, 0)
        return changed

    def check(self, raise_on_violation: bool = True) -> list[MaskViolation]:
        """See :func:`check_masks`."""
        return check_masks(self.model, self.masks, raise_on_violation=raise_on_violation)

    @property
    def attached(self) -> bool:
        """Whether gradient hooks are registered."""
        return bool(self._handles)

    def __enter__(self) -> SparsityKeeper:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()


def _gradient_mask(pruned: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(pruned.to(grad.device), 0)

    return hook
