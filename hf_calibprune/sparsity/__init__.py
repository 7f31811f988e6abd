"""Layer 1: sparsity patterns, score → mask selection, streaming input statistics and per-layer allocation.

Pure tensor code: torch only, no transformers, no devices chosen here.
"""

from __future__ import annotations

from .allocation import LayerSparsity, owl_layer_sparsities, outlier_ratio, uniform_layer_sparsities
from .patterns import SparsityPattern, count_zeros, lowest_mask, parse_pattern, prune_mask_from_scores
from .statistics import InputStatistics, quadratic_trace

__all__ = [
    "InputStatistics",
    "LayerSparsity",
    "SparsityPattern",
    "count_zeros",
    "lowest_mask",
    "outlier_ratio",
    "owl_layer_sparsities",
    "parse_pattern",
    "prune_mask_from_scores",
    "quadratic_trace",
    "uniform_layer_sparsities",
]
