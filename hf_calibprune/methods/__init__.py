"""Layer 2: pruning methods, one file each, looked up by name in :data:`METHODS`."""

from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import MASK_PATTERNS, PruneResult, PruningMethod, StatisticsNeed

__all__ = ["MASK_PATTERNS", "METHODS", "PruneResult", "PruningMethod", "StatisticsNeed", "build_method"]

METHODS: Registry[type[PruningMethod]] = Registry(
    "pruning method",
    {
        "magnitude": "hf_calibprune.methods.magnitude:Magnitude",
        "wanda": "hf_calibprune.methods.wanda:Wanda",
        "sparsegpt": "hf_calibprune.methods.sparsegpt:SparseGPT",
        "ria": "hf_calibprune.methods.ria:RIA",
        "flap": "hf_calibprune.structured.flap:FLAP",
        "block-influence": "hf_calibprune.structured.blocks:BlockInfluence",
        "block-perplexity": "hf_calibprune.structured.blocks:BlockPerplexity",
        "reap": "hf_calibprune.structured.reap:REAP",
    },
    error=ConfigError,
)


def build_method(name: str, options: dict | None = None) -> PruningMethod:
    """Instantiate the method registered as ``name`` with its options dict."""
    return METHODS.get(name).from_options(options)
