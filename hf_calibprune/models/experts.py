"""Find Mixture-of-Experts weights in a decoder block without per-architecture tables.

transformers 5 stores a block's routed experts fused: one module (``mlp.experts``) holds 3-D parameters
``[num_experts, ...]``, usually ``gate_up_proj`` and ``down_proj``. Classes decorated with
``@use_experts_implementation`` say how they are laid out (``is_transposed``: ``[E, in, out]`` instead of
``[E, out, in]``; ``is_concatenated``: gate and up halves ``[gate; up]`` rather than interleaved ``gate0, up0,
gate1, ...`` as gpt-oss stores them). Each expert's gate, up and down matrices are separate prunable matrices
(:class:`ExpertMatrix`), so every one reaches its own target. The router beside the experts stays dense.

Experts kept as an ``nn.ModuleList`` of per-expert MLPs are plain Linears and need nothing from this module
beyond :func:`find_moe_blocks` (their routers are listed the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layout import is_prunable_linear

__all__ = [
    "ExpertMatrix",
    "FusedExperts",
    "MoeBlock",
    "RoutingLimits",
    "expert_weight_norms",
    "find_fused_experts",
    "find_moe_blocks",
    "fused_parameter_of",
    "routing_limits",
]

_FUSED_PARAMETER_SUFFIX = "_proj"


@dataclass(frozen=True)
class ExpertMatrix:
    """One expert's matrix inside a fused 3-D parameter, seen as ``[out_features, in_features]``.

    Args:
        experts (`str`): path of the fused experts module inside the block (``"mlp.experts"``).
        parameter (`str`): the 3-D parameter's name on that module (``"gate_up_proj"``).
        expert (`int`): the expert's index.
        part (`str`, *optional*): ``"gate"`` or ``"up"`` for a half of a fused gate/up parameter.
        rows (`slice`): which rows of the expert's ``[out, in]`` matrix belong to this part (a step of 2 for
            interleaved gate/up).
        transposed (`bool`): the parameter stores ``[E, in, out]``.
    """

    experts: str
    parameter: str
    expert: int
    part: str | None
    rows: slice
    transposed: bool

    @property
    def name(self) -> str:
        """Its name inside the block: ``"mlp.experts.gate_up_proj[3].gate"``."""
        suffix = f".{self.part}" if self.part else ""
        return f"{self.experts}.{self.parameter}[{self.expert}]{suffix}"

    @property
    def input_key(self) -> tuple[str, str, int]:
        """Matrices reading the same input (an expert's gate and up halves) share this key."""
        return (self.experts, self.parameter, self.expert)

    def view(self, stored: torch.Tensor) -> torch.Tensor:
        """This matrix as ``[out, in]``, a view into the whole 3-D parameter value ``stored``."""
        matrix = stored[self.expert]
        return (matrix.t() if self.transposed else matrix)[self.rows]


def fused_parameter_of(name: str) -> str | None:
    """The fused parameter an :attr:`ExpertMatrix.name` (with any prefix) lies in, ``None`` for any other name:
    ``"model.layers.0.mlp.experts.gate_up_proj[3].gate"`` -> ``"model.layers.0.mlp.experts.gate_up_proj"``."""
    head, bracket, _ = name.partition("[")
    return head if bracket else None


@dataclass(frozen=True)
class FusedExperts:
    """A module holding every routed expert of a block as 3-D parameters.

    Args:
        name (`str`): its path inside the block.
        module (`nn.Module`): the module.
        parameters (`tuple[str, ...]`): names of its 3-D expert weight parameters (biases excluded).
        num_experts (`int`): the leading dimension of those parameters.
        transposed (`bool`): weights stored as ``[E, in, out]``.
        concatenated (`bool`): a fused gate/up parameter holds ``[gate; up]`` (else gate and up interleave).
    """

    name: str
    module: nn.Module
    parameters: tuple[str, ...]
    num_experts: int
    transposed: bool
    concatenated: bool

    def matrices(self) -> list[ExpertMatrix]:
        """Every expert's matrices: per expert, per parameter, gate and up halves separately."""
        found = []
        for parameter in self.parameters:
            value = getattr(self.module, parameter)
            out_features = value.shape[2] if self.transposed else value.shape[1]
            if "gate_up" in parameter and getattr(self.module, "has_gate", True) and out_features % 2 == 0:
                half = out_features // 2
                if self.concatenated:
                    parts = (("gate", slice(0, half)), ("up", slice(half, out_features)))
                else:
                    parts = (("gate", slice(0, out_features, 2)), ("up", slice(1, out_features, 2)))
            else:
                parts = ((None, slice(0, out_features)),)
            for expert in range(self.num_experts):
                for part, rows in parts:
                    found.append(ExpertMatrix(self.name, parameter, expert, part, rows, self.transposed))
        return found


@dataclass(frozen=True)
class MoeBlock:
    """A module that routes tokens to experts: the experts, and its routers (kept dense).

    Args:
        name (`str`): its path inside the decoder block (``"mlp"``).
        num_experts (`int`): number of routed experts.
        fused (`FusedExperts`, *optional*): the fused experts, when stored as 3-D parameters.
        routers (`tuple[str, ...]`): paths (inside the decoder block) of the router parameters.
    """

    name: str
    num_experts: int
    fused: FusedExperts | None
    routers: tuple[str, ...]


def _is_fused_experts(module: nn.Module) -> bool:
    weights = [p for n, p in module.named_parameters(recurse=False) if p.dim() == 3 and not n.endswith("bias")]
    return bool(weights) and len({p.shape[0] for p in weights}) == 1


def find_fused_experts(block: nn.Module) -> list[FusedExperts]:
    """Every fused experts module in ``block``."""
    return [moe.fused for moe in find_moe_blocks(block) if moe.fused is not None]


def find_moe_blocks(block: nn.Module) -> list[MoeBlock]:
    """Every Mixture-of-Experts module in ``block``: a module whose child ``experts`` is a fused experts module or
    an ``nn.ModuleList`` of MLPs."""
    found = []
    for name, module in block.named_modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module) or experts not in set(module.children()):
            continue
        prefix = f"{name}." if name else ""
        if _is_fused_experts(experts):
            parameters = tuple(
                n for n, p in experts.named_parameters(recurse=False) if p.dim() == 3 and not n.endswith("bias")
            )
            num_experts = getattr(experts, parameters[0]).shape[0]
            fused = FusedExperts(
                name=f"{prefix}experts",
                module=experts,
                parameters=parameters,
                num_experts=num_experts,
                transposed=bool(getattr(experts, "is_transposed", False)),
                concatenated=bool(getattr(experts, "is_concatenated", True)),
            )
        elif isinstance(experts, nn.ModuleList) and len(experts) > 1 and all(
            any(is_prunable_linear(m) for m in expert.modules()) for expert in experts
        ):
            num_experts, fused = len(experts), None
        else:
            continue
        found.append(MoeBlock(name, num_experts, fused, _routers(module, prefix, num_experts)))
    return found


def _routers(moe: nn.Module, prefix: str, num_experts: int) -> tuple[str, ...]:
    """Rank-2 weights of ``moe``'s direct children (other than the experts) with one row per expert, or a single
    row (a shared expert's sigmoid gate, as Qwen2-MoE has)."""
    routers = []
    for child_name, child in moe.named_children():
        if child_name == "experts":
            continue
        for parameter_name, parameter in child.named_parameters(recurse=False):
            if parameter.dim() == 2 and parameter.shape[0] in (num_experts, 1):
                routers.append(f"{prefix}{child_name}.{parameter_name}")
    return tuple(routers)


def expert_weight_norms(block: nn.Module, moe: MoeBlock) -> torch.Tensor:
    """Each routed expert's weight norm ``sqrt(Σ W²)`` over all its matrices (biases excluded), ``[num_experts]``."""
    squares = torch.zeros(moe.num_experts, dtype=torch.float64)
    if moe.fused is not None:
        for parameter in moe.fused.parameters:
            value = getattr(moe.fused.module, parameter).detach()
            squares += value.double().square().sum(dim=(1, 2)).cpu()
    else:
        for expert, module in enumerate(block.get_submodule(moe.name).experts):
            weights = [p.detach().double() for p in module.parameters() if p.dim() >= 2]
            squares[expert] = sum(float(w.square().sum()) for w in weights)
    return squares.sqrt().float()


@dataclass(frozen=True)
class RoutingLimits:
    """How many experts a router picks: ``top_k`` per token, from ``topk_groups`` of ``num_groups`` expert groups
    (DeepSeek-V3's group-limited routing; one group and ``topk_groups=None`` elsewhere)."""

    top_k: int
    num_groups: int = 1
    topk_groups: int | None = None


def routing_limits(config, block: nn.Module, moe: MoeBlock) -> RoutingLimits:
    """The routing limits of ``moe`` from the (text) config, else from the ``top_k`` its module or router holds.

    Raises:
        :class:`ValueError`: neither says how many experts each token is routed to.
    """
    module = block.get_submodule(moe.name)
    routers = [block.get_submodule(path.rsplit(".", 1)[0]) for path in moe.routers]
    candidates = [getattr(config, "num_experts_per_tok", None), getattr(module, "top_k", None)]
    candidates += [getattr(router, "top_k", None) for router in routers]
    top_k = next((int(k) for k in candidates if isinstance(k, int) and not isinstance(k, bool)), None)
    if top_k is None:
        raise ValueError(f"{type(module).__name__} does not say how many experts each token is routed to (top_k).")
    groups = getattr(config, "n_group", None)
    if isinstance(groups, int) and groups > 1:
        return RoutingLimits(top_k, groups, getattr(config, "topk_group", None))
    return RoutingLimits(top_k)
