"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play: An Efficient
Post-training Pruning Method for Large Language Models", openreview.net/forum?id=Tr0lPx9woF).

Score ``(|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖x_j‖₂^a``: a weight's magnitude relative to the other
weights of its output row plus relative to the other weights of its input column, scaled by the input
channel's activation norm to the power ``a``. Follows the reference code
(github.com/biomedical-cybernetics/Relative-importance-and-activation-pruning, ``lib/prune.py``,
``prune_ria``); its channel reallocation and linear-sum-assignment permutations for N:M are not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError
from ..sparsity import InputStatistics, SparsityPattern, prune_mask_from_scores
from .base import PruneResult, PruningMethod

__all__ = ["RIA", "RIAOptions", "ria_scores"]


def ria_scores(weight: torch.Tensor, norms: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """Relative importance of each weight times ``‖x_j‖₂ ** a``.

    Args:
        weight (`torch.Tensor`): ``[out_features, in_features]``.
        norms (`torch.Tensor`): ``‖x_j‖₂`` per input channel, ``[in_features]``.
        a (`float`, *optional*, defaults to 0.5): exponent of the activation norm.

    Returns:
        `torch.Tensor` of scores, the shape of ``weight``. An all-zero row or column contributes zero, not NaN.
    """
    magnitude = weight.abs()
    row_sums = magnitude.sum(dim=1, keepdim=True)
    column_sums = magnitude.sum(dim=0, keepdim=True)
    relative = magnitude / row_sums.where(row_sums > 0, torch.ones_like(row_sums))
    relative = relative + magnitude / column_sums.where(column_sums > 0, torch.ones_like(column_sums))
    return relative * norms.to(weight.dtype).pow(a).unsqueeze(0)


@dataclass(frozen=True)
class RIAOptions:
    """Args:
    a (`float`, *optional*, defaults to 0.5): exponent of the input-channel norm ``‖x_j‖₂`` (the paper's
        ``a``; 0 ignores activations, 1 weighs them as Wanda does).
    scope (`str`, *optional*, defaults to `"row"`): for unstructured patterns, compare scores within each output
        row (``"row"``, exact per-row sparsity, as Wanda) or across the whole matrix (``"layer"``, the reference
        code's default). N:M patterns always compare within each group.
    """

    a: float = 0.5
    scope: Literal["row", "layer"] = "row"

    def __post_init__(self) -> None:
        if not isinstance(self.a, (int, float)) or isinstance(self.a, bool) or self.a < 0:
            raise ConfigError(f"RIA option `a={self.a!r}` must be a number >= 0; the paper uses a=0.5.")
        if self.scope not in ("row", "layer"):
            raise ConfigError(f"RIA option `scope={self.scope!r}` must be 'row' or 'layer'.")


class RIA(PruningMethod):
    name = "ria"
    Options = RIAOptions
    needs = "norms"

    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        scores = ria_scores(weight, stats.norms.to(weight.device), self.options.a)
        mask = prune_mask_from_scores(scores, sparsity, pattern, scope=self.options.scope)
        return PruneResult(weight.masked_fill(mask, 0), mask)
