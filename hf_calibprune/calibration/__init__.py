"""Calibration data: named sources (one file each), formats (plain, zero, single, ICL, CoT), mixtures,
tokenization into ``[num_samples, seq_len]`` samples, and a fingerprint for the report.

The engine takes token tensors, this package makes them, the pruner joins them::

    from hf_calibprune.calibration import CalibrationConfig, build_calibration_samples

    samples = build_calibration_samples(
        CalibrationConfig(sources={"gsm8k": 0.5, "c4": 0.5}, format="icl", shots=3),
        tokenizer, num_samples=128, seq_len=2048, seed=0,
    )
"""

from __future__ import annotations

from .build import build_calibration_samples, render_samples, split_counts
from .config import FORMATS, CalibrationConfig, CalibrationConfigError
from .io import DATA_DIR_ENV, HubSpec
from .samples import CalibrationSamples
from .sources import SOURCES

__all__ = [
    "CalibrationConfig",
    "CalibrationConfigError",
    "CalibrationSamples",
    "build_calibration_samples",
    "render_samples",
    "split_counts",
    "SOURCES",
    "FORMATS",
    "DATA_DIR_ENV",
    "HubSpec",
]
