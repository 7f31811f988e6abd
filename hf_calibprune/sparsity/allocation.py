"""Per-layer sparsity allocation: uniform, or OWL (outlier-weighted layerwise sparsity, Yin et al. 2024)."""

from __future__ import annotations

import torch

__all__ = ["LayerSparsity", "uniform_layer_sparsities", "outlier_ratio", "owl_layer_sparsities"]

#: Requested sparsity per decoder block, keyed by the block's module path (e.g. ``"model.layers.3"``).
LayerSparsity = dict[str, float]


def uniform_layer_sparsities(block_names: list[str], sparsity: float) -> LayerSparsity:
    """The same sparsity for every block."""
    return {name: sparsity for name in block_names}


def outlier_ratio(scores: torch.Tensor, threshold: float) -> float:
    """Fraction of Wanda scores above ``threshold`` × their mean (OWL's layerwise outlier distribution)."""
    return float((scores > scores.mean() * threshold).float().mean())


def owl_layer_sparsities(outlier_ratios: dict[str, float], sparsity: float, lam: float) -> LayerSparsity:
    """OWL: blocks with more outliers get lower sparsity, within ``sparsity ± lam``, mean preserved.

    Follows the reference code (github.com/luuyin/OWL, ``prune_wanda_outlier``): ratios are min-max
    scaled to ``[0, 2·lam]``, centred on the target density ``1 - sparsity``.
    """
    names = list(outlier_ratios)
    ratios = torch.tensor([outlier_ratios[name] for name in names], dtype=torch.float64)
    spread = ratios.max() - ratios.min()
    if spread <= 0:
        return uniform_layer_sparsities(names, sparsity)
    density = (ratios - ratios.min()) / spread * (2 * lam)
    density = density - density.mean() + (1.0 - sparsity)
    return {name: float(1.0 - d) for name, d in zip(names, density)}
