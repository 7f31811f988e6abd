"""Count what the decoder blocks hold, pruned or not: the report's totals come from the weights themselves.

Every parameter of rank ≥ 2 inside a decoder block counts. Those the engine prunes are a block's Linears and
fused expert matrices; the rest stay dense for a reason the report names: ``"ignored"`` (the user's
``ignore``), ``"router"`` (a Mixture-of-Experts router), ``"bias"`` (a fused experts bias) or
``"unsupported"`` (a parameter type the engine does not know how to prune, which ``prune`` warns about).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models import DecoderLayout, find_fused_experts, find_moe_blocks, find_prunable_linears, is_prunable_linear
from ..sparsity import count_zeros
from .offload import read_parameter

__all__ = ["DenseWeight", "WeightCount", "count_block_weights", "dense_weights"]


@dataclass(frozen=True)
class DenseWeight:
    """A rank ≥ 2 parameter of a decoder block that the engine leaves dense, and why."""

    name: str
    shape: list[int]
    reason: str

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def to_dict(self) -> dict:
        return {**asdict(self), "numel": self.numel}


@dataclass(frozen=True)
class WeightCount:
    """Zeros and elements over every rank ≥ 2 parameter inside the decoder blocks."""

    zeros: int
    total: int


def _pruned_parameters(block: nn.Module, ignore: tuple[str, ...]) -> set[str]:
    names = {f"{name}.weight" for name in find_prunable_linears(block, ignore)}
    for fused in find_fused_experts(block):
        for parameter in fused.parameters:
            full = f"{fused.name}.{parameter}"
            if not any(pattern in full for pattern in ignore):
                names.add(full)
    return names


def dense_weights(layout: DecoderLayout, ignore: tuple[str, ...] = ()) -> list[DenseWeight]:
    """Every rank ≥ 2 parameter of the decoder blocks that pruning leaves dense, with its reason."""
    found = []
    for index, block in enumerate(layout.blocks):
        pruned = _pruned_parameters(block, ignore)
        routers = {router for moe in find_moe_blocks(block) for router in moe.routers}
        fused = {f"{f.name}.": f for f in find_fused_experts(block)}
        for name, parameter in block.named_parameters():
            if parameter.dim() < 2 or name in pruned:
                continue
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if name in routers:
                reason = "router"
            elif any(pattern in name for pattern in ignore):
                reason = "ignored"
            elif name.endswith("bias") and any(name.startswith(prefix) for prefix in fused):
                reason = "bias"
            elif owner and is_prunable_linear(block.get_submodule(owner)):
                reason = "ignored"
            else:
                reason = "unsupported"
            found.append(DenseWeight(f"{layout.block_name(index)}.{name}", list(parameter.shape), reason))
    return found


def count_block_weights(layout: DecoderLayout) -> WeightCount:
    """Zeros over every rank ≥ 2 parameter of the decoder blocks, read wherever accelerate keeps them."""
    zeros = total = 0
    for block in layout.blocks:
        for name, parameter in block.named_parameters():
            if parameter.dim() < 2:
                continue
            owner, _, attribute = name.rpartition(".")
            module = block.get_submodule(owner) if owner else block
            value = read_parameter(module, attribute, root=block, name=owner)
            total += value.numel()
            zeros += count_zeros(value)
    return WeightCount(zeros, total)
