"""Wanda (Sun et al. 2024, arXiv 2306.11695): score |W_ij| · ‖x_j‖₂, compared within each output row."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sparsity import InputStatistics, SparsityPattern, prune_mask_from_scores
from .base import PruneResult, PruningMethod

__all__ = ["Wanda", "WandaOptions", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W| scaled by the L2 norm (not the squared norm) of each input channel."""
    return weight.abs().mul_(norms.to(weight.dtype).unsqueeze(0))


@dataclass(frozen=True)
class WandaOptions:
    """Wanda has no options: the comparison group is each output row, as in the paper."""


class Wanda(PruningMethod):
    name = "wanda"
    Options = WandaOptions
    needs = "norms"
    patterns = ("unstructured", "N:M", "channels")

    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        mask = prune_mask_from_scores(wanda_scores(weight, stats.norms), sparsity, pattern, scope="row")
        return PruneResult(weight.masked_fill(mask, 0), mask)

    def channel_scores(self, weight: torch.Tensor, stats: InputStatistics | None) -> torch.Tensor:
        """Wanda-sp (as in FLAP's baseline): the Wanda scores of each input column, summed."""
        return wanda_scores(weight, stats.norms).sum(dim=0)
