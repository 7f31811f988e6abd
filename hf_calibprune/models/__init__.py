"""Layer 3: find the decoder blocks and prunable Linears of any decoder-only transformers model."""

from __future__ import annotations

from .layout import (
    DecoderLayout,
    check_decoder_only,
    find_decoder_layout,
    find_prunable_linears,
    get_weight,
    is_prunable_linear,
    set_weight,
)

__all__ = [
    "DecoderLayout",
    "check_decoder_only",
    "find_decoder_layout",
    "find_prunable_linears",
    "get_weight",
    "is_prunable_linear",
    "set_weight",
]
