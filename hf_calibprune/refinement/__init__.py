"""Layer 2: mask refinement after any method (DSnoT, SparseSwaps), one file each, looked up in :data:`REFINERS`."""

from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import MaskRefiner

__all__ = ["REFINERS", "MaskRefiner", "build_refiner"]

REFINERS: Registry[type[MaskRefiner]] = Registry(
    "mask refiner",
    {
        "dsnot": "hf_calibprune.refinement.dsnot:DSnoT",
        "swaps": "hf_calibprune.refinement.swaps:SparseSwaps",
    },
    error=ConfigError,
)


def build_refiner(name: str, options: dict | None = None) -> MaskRefiner:
    """Instantiate the refiner registered as ``name`` with its options dict."""
    return REFINERS.get(name).from_options(options)
