"""Layer 2: structured pruning math: score heads, MLP channels, decoder blocks and experts from calibration data.

Removing the chosen structures and rewriting the config is model surgery, in :mod:`hf_calibprune.models.surgery`.
"""

from __future__ import annotations

from .base import STRUCTURED_PATTERNS, BlockMeasures, BlockSelector
from .scores import (
    WidthPlan,
    block_influence_terms,
    compensation_bias,
    expert_removal_count,
    fluctuation_scores,
    group_scores,
    lowest_experts,
    lowest_indices,
    plan_width,
    routed_saliency,
)

__all__ = [
    "STRUCTURED_PATTERNS",
    "BlockMeasures",
    "BlockSelector",
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
