"""Layer 4: capture calibration inputs and walk the decoder blocks, pruning each in turn."""

from __future__ import annotations

from .capture import BlockCall, CapturedInputs, capture_block_inputs
from .loop import EngineOptions, LayerwiseEngine, Schedule

__all__ = ["BlockCall", "CapturedInputs", "EngineOptions", "LayerwiseEngine", "Schedule", "capture_block_inputs"]
