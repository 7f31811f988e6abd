"""REAP (Lasby et al. 2025, arXiv 2510.13999): remove the experts that contribute least to their blocks' outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import StructuredMethod

__all__ = ["REAP", "REAPOptions"]


@dataclass(frozen=True)
class REAPOptions:
    """REAP has no options: one pass over the calibration data scores every expert."""


class REAP(StructuredMethod):
    """Router-weighted Expert Activation Pruning: an expert's saliency is the mean, over the calibration tokens the
    router sends it, of its gate (routing) weight times the L2 norm of its output, ``mean g · ‖f(x)‖₂``; the
    lowest-scored experts of each MoE block go. An expert routed no token scores 0.
    """

    name = "reap"
    Options = REAPOptions
    needs = "norms"  # calibration data; the engine gathers routed saliency instead of input norms
    patterns = ("experts",)

    def expert_scores(self, weight_norms: torch.Tensor, saliency: torch.Tensor | None) -> torch.Tensor:
        return saliency
