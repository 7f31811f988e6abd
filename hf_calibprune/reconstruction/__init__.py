"""Layer 2: weight reconstruction after any method and refiner, one file each, looked up in
:data:`RECONSTRUCTORS`: per Linear from its Gram matrix (ADMM), or per block on the calibration activations."""

from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import Reconstructor, WeightReconstructor, layer_error
from .block import BlockReconstructor

__all__ = [
    "RECONSTRUCTORS", "BlockReconstructor", "Reconstructor", "WeightReconstructor", "build_reconstructor", "layer_error"
]

RECONSTRUCTORS: Registry[type[Reconstructor]] = Registry(
    "weight reconstructor",
    {
        "admm": "hf_calibprune.reconstruction.admm:ADMMReconstructor",
        "block": "hf_calibprune.reconstruction.block:BlockReconstructor",
    },
    error=ConfigError,
)


def build_reconstructor(name: str, options: dict | None = None) -> Reconstructor:
    """Instantiate the reconstructor registered as ``name`` with its options dict."""
    return RECONSTRUCTORS.get(name).from_options(options)
