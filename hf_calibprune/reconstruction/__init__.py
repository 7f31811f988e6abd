"""Layer 2: weight reconstruction after any method and refiner (ADMM), one file each, looked up in
:data:`RECONSTRUCTORS`."""

from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import WeightReconstructor, layer_error

__all__ = ["RECONSTRUCTORS", "WeightReconstructor", "build_reconstructor", "layer_error"]

RECONSTRUCTORS: Registry[type[WeightReconstructor]] = Registry(
    "weight reconstructor",
    {
        "admm": "hf_calibprune.reconstruction.admm:ADMMReconstructor",
    },
    error=ConfigError,
)


def build_reconstructor(name: str, options: dict | None = None) -> WeightReconstructor:
    """Instantiate the reconstructor registered as ``name`` with its options dict."""
    return RECONSTRUCTORS.get(name).from_options(options)
