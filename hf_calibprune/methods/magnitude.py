"""Magnitude pruning: drop the smallest |W|, no calibration data needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..sparsity import InputStatistics, SparsityPattern, prune_mask_from_scores
from .base import PruneResult, PruningMethod

__all__ = ["Magnitude", "MagnitudeOptions"]


@dataclass(frozen=True)
class MagnitudeOptions:
    """Args:
    scope (`str`, *optional*, defaults to `"layer"`): compare weights across the whole matrix
        (``"layer"``, as the Wanda paper's magnitude baseline) or within each output row (``"row"``).
    """

    scope: Literal["layer", "row"] = "layer"


class Magnitude(PruningMethod):
    name = "magnitude"
    Options = MagnitudeOptions
    needs = "none"
    patterns = ("unstructured", "N:M", "channels", "experts")

    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        mask = prune_mask_from_scores(weight.abs(), sparsity, pattern, scope=self.options.scope)
        return PruneResult(weight.masked_fill(mask, 0), mask)

    def channel_scores(self, weight: torch.Tensor, stats: InputStatistics | None) -> torch.Tensor:
        """The L1 norm of each input column."""
        return weight.abs().sum(dim=0)

    def expert_scores(self, weight_norms: torch.Tensor, saliency: torch.Tensor | None) -> torch.Tensor:
        """Each expert's weight norm (a baseline that needs no data)."""
        return weight_norms
