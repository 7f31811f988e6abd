"""FLAP (An et al., AAAI 2024, arXiv 2312.11983): fluctuation-scored heads and channels with bias compensation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sparsity import InputStatistics
from .base import StructuredMethod
from .scores import fluctuation_scores

__all__ = ["FLAP", "FLAPOptions"]


@dataclass(frozen=True)
class FLAPOptions:
    """Args:
    bias_compensation (`bool`, *optional*, defaults to `True`): fold the mean contribution of removed channels into
        the bias of ``o_proj``/``down_proj`` (adding one through ``attention_bias``/``mlp_bias`` where the
        architecture has no bias there but its config can give it one).
    """

    bias_compensation: bool = True


class FLAP(StructuredMethod):
    """Scores each input channel of the attention and MLP output projections by ``Var(x_j) · ‖W[:, j]‖²``.

    A channel whose input barely fluctuates over calibration tokens is well replaced by its mean; FLAP removes
    the least fluctuating heads and channels and adds their mean contribution to the output bias.
    """

    name = "flap"
    Options = FLAPOptions
    needs = "norms"
    patterns = ("channels",)

    @property
    def compensates_bias(self) -> bool:
        return self.options.bias_compensation

    def channel_scores(self, weight: torch.Tensor, stats: InputStatistics | None) -> torch.Tensor:
        return fluctuation_scores(weight, stats.variance.to(weight.device))
