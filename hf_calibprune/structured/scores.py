"""Pure tensor math of structured pruning: structure scores, FLAP's fluctuation and bias, block influence, budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "WidthPlan",
    "block_influence_terms",
    "compensation_bias",
    "expert_removal_count",
    "fluctuation_scores",
    "group_scores",
    "lowest_experts",
    "lowest_indices",
    "plan_width",
    "routed_saliency",
]


def fluctuation_scores(weight: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation metric of each input channel ``j`` of ``weight`` (``[out, in]``): ``Var(x_j) · ‖W[:, j]‖²``.

    An, Zhao, Yu, Tang, Wang, *Fluctuation-based Adaptive Structured Pruning for LLMs* (AAAI 2024, arXiv 2312.11983):
    a channel whose input hardly varies over the calibration tokens can be replaced by its mean, folded into a bias.
    """
    return variance.to(weight.dtype) * weight.square().sum(dim=0)


def compensation_bias(weight: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation: ``W[:, removed] @ mean[removed]``, the removed channels' mean contribution, ``[out]``."""
    removed = removed.to(weight.device)
    return weight[:, removed] @ mean.to(weight.device, weight.dtype)[removed]


def group_scores(channel_scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Sum consecutive runs of ``group_size`` channel scores: a head's ``head_dim`` columns, or a key/value group's."""
    if channel_scores.numel() % group_size:
        raise ValueError(f"{channel_scores.numel()} channels do not split into groups of {group_size}.")
    return channel_scores.reshape(-1, group_size).sum(dim=1)


def lowest_indices(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores, ascending by index (ties go to the earlier index)."""
    if count <= 0:
        return []
    order = torch.sort(scores.float().cpu(), stable=True).indices[:count]
    return sorted(int(i) for i in order)


def block_influence_terms(
    inputs: torch.Tensor, outputs: torch.Tensor, token_mask: torch.Tensor | None = None
) -> tuple[float, int]:
    """ShortGPT's block influence summed over tokens: ``Σ (1 − cos(x_in, x_out))`` and the token count.

    Men et al., *ShortGPT: Layers in Large Language Models are More Redundant Than You Expect* (arXiv 2403.03853).
    """
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    y = outputs.reshape(-1, outputs.shape[-1]).float()
    if token_mask is not None and token_mask.numel() == x.shape[0]:
        keep = token_mask.reshape(-1).to(x.device)
        x, y = x[keep], y[keep]
    return float((1.0 - F.cosine_similarity(x, y, dim=-1)).sum()), int(x.shape[0])


@dataclass(frozen=True)
class WidthPlan:
    """How many structures each decoder block loses under ``pattern="channels"`` (the same in every block).

    Args:
        groups (`int`): attention key/value groups removed (each with its query heads).
        channels (`int`): MLP intermediate channels removed.
        removed_parameters (`int`): parameters one block loses, net of any compensation biases added.
        target_parameters (`float`): what ``sparsity`` asked for, per block.
    """

    groups: int
    channels: int
    removed_parameters: int
    target_parameters: float


def plan_width(
    sparsity: float,
    block_parameters: int,
    num_groups: int,
    group_parameters: int,
    num_channels: int,
    channel_parameters: int,
    *,
    heads_removable: bool = True,
    added_attention: tuple[int, int] = (0, 0),
    added_mlp: tuple[int, int] = (0, 0),
) -> WidthPlan:
    """Split ``sparsity × block_parameters`` between attention groups and MLP channels.

    Attention loses ``round(sparsity × num_groups)`` whole key/value groups (its share, rounded to whole groups);
    MLP channels make up the rest, so the block loses the requested count within half an MLP channel. Compensation
    biases that removal would add are ``(fixed, per kept structure)`` pairs in ``added_*`` and count against it.

    Raises:
        :class:`~hf_calibprune.errors.ConfigError`: the sparsity would remove every attention group or every MLP
            channel of a block.
    """
    target = sparsity * block_parameters
    groups = math.floor(sparsity * num_groups + 0.5) if heads_removable and num_groups else 0
    if heads_removable and groups >= num_groups > 0:
        limit = (num_groups - 0.5) / num_groups
        raise ConfigError(
            f"`sparsity={sparsity}` with pattern='channels' would remove every attention head of each block (all "
            f"{num_groups} key/value groups); pass a sparsity below {limit:.3f}."
        )

    def removed(g: int, c: int) -> int:
        added = 0
        if g:
            added += added_attention[0] + added_attention[1] * (num_groups - g)
        if c:
            added += added_mlp[0] + added_mlp[1] * (num_channels - c)
        return g * group_parameters + c * channel_parameters - added

    while True:
        per_channel = channel_parameters + added_mlp[1]
        rest = target - removed(groups, 0) + added_mlp[0] + added_mlp[1] * num_channels
        channels = max(0, math.floor(rest / per_channel + 0.5)) if target > 0 else 0
        if removed(groups, channels) - target <= per_channel / 2 or groups == 0:
            break
        groups -= 1  # attention's rounded share alone overshoots the target
    if channels >= num_channels:
        raise ConfigError(
            f"`sparsity={sparsity}` with pattern='channels' would remove every MLP channel of each block; pass a "
            "smaller sparsity."
        )
    return WidthPlan(groups, channels, removed(groups, channels), target)


def routed_saliency(gates: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """REAP's term of each routed (token, expert) pair: ``g · ‖f(x)‖₂``, the gate (routing) weight the block
    multiplies the expert's output by, times the L2 norm of that output (``gates`` ``[n]``, ``outputs`` ``[n, h]``).

    Lasby et al., *REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression* (arXiv 2510.13999); an
    expert's score is the mean of these terms over the tokens routed to it.
    """
    return gates.float() * outputs.float().norm(dim=-1)


def expert_removal_count(
    sparsity: float, num_experts: int, top_k: int, num_groups: int = 1, topk_groups: int | None = None
) -> int:
    """Experts removed from each MoE block for ``sparsity``: ``round(sparsity × num_experts)`` (halves round up).

    With group-limited routing (``num_groups`` > 1, DeepSeek-V3's ``n_group``) the count must split evenly over
    the groups, since each group loses the same number of experts so that every kept expert stays in its group.

    Raises:
        :class:`~hf_calibprune.errors.ConfigError`: the count would remove every expert, leave fewer than ``top_k``
            experts (or fewer than ``top_k`` in the ``topk_groups`` groups a token may use, or fewer than 2 per
            group, which group scores need), or does not split over the groups.
    """
    count = math.floor(sparsity * num_experts + 0.5)
    if count >= num_experts:
        raise ConfigError(
            f"`sparsity={sparsity}` with pattern='experts' would remove all {num_experts} experts of each MoE "
            f"block; pass a sparsity below {(num_experts - 0.5) / num_experts:.3f}."
        )
    if num_experts - count < top_k:
        limit = (num_experts - top_k + 0.5) / num_experts
        raise ConfigError(
            f"`sparsity={sparsity}` with pattern='experts' would leave {num_experts - count} of {num_experts} experts, "
            f"fewer than the {top_k} each token is routed to (num_experts_per_tok); pass a sparsity below {limit:.3f}."
        )
    if num_groups > 1 and count:
        per_group = num_experts // num_groups
        kept = per_group - count // num_groups
        if count % num_groups:
            step = num_groups / num_experts
            raise ConfigError(
                f"`sparsity={sparsity}` with pattern='experts' removes {count} experts per block, which does not split "
                f"over the router's {num_groups} expert groups (n_group); each group must lose the same number so its "
                f"experts stay together. Pass a sparsity that is a multiple of {step:g} (e.g. {step:g})."
            )
        if kept < 2 or (topk_groups is not None and topk_groups * kept < top_k):
            raise ConfigError(
                f"`sparsity={sparsity}` with pattern='experts' would leave {kept} experts in each of the {num_groups} "
                f"expert groups; group-limited routing needs at least 2 per group and {top_k} (num_experts_per_tok) in "
                f"the {topk_groups} groups (topk_group) a token may use. Pass a smaller sparsity."
            )
    return count


def lowest_experts(scores: torch.Tensor, count: int, num_groups: int = 1) -> list[int]:
    """The ``count`` lowest-scored experts; with ``num_groups`` > 1, the ``count / num_groups`` lowest of each group
    of consecutive experts (ties go to the earlier index)."""
    if num_groups <= 1:
        return lowest_indices(scores, count)
    size, per_group = scores.numel() // num_groups, count // num_groups
    groups = scores.reshape(num_groups, size)
    return [g * size + i for g in range(num_groups) for i in lowest_indices(groups[g], per_group)]
