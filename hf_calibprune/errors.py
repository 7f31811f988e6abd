"""Exception types of hf_calibprune.

Every error a user can cause derives from :class:`CalibPruneError` (itself a ``ValueError``), and its
message says what was wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CalibPruneError",
    "ConfigError",
    "CalibrationError",
    "ModelStructureError",
    "CheckpointError",
    "NumericalError",
    "AcceleratorMemoryError",
    "SparsityMaskError",
]


class CalibPruneError(ValueError):
    """Base class of every error raised for bad input or an unrecoverable pruning state."""


class ConfigError(CalibPruneError):
    """A :class:`~hf_calibprune.PruningConfig` (or another config) holds an invalid value."""


class CalibrationError(CalibPruneError):
    """Calibration data could not be found, loaded, rendered or tokenized as asked."""


class ModelStructureError(CalibPruneError):
    """The model has no decoder blocks or prunable layers that hf_calibprune can find."""


class CheckpointError(CalibPruneError):
    """A saved checkpoint, config or report is missing, truncated or inconsistent."""


class NumericalError(CalibPruneError):
    """NaN/inf values or an unrecoverable ill-conditioned solve appeared while pruning."""


class AcceleratorMemoryError(CalibPruneError, MemoryError):
    """The accelerator ran out of memory while pruning; the message lists the settings that need less."""


class SparsityMaskError(NumericalError):
    """A pruned weight holds non-zero values where its sparsity mask says it must be zero (after fine-tuning)."""
