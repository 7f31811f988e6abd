"""Layer 3: find the decoder blocks and prunable Linears of any decoder-only transformers model."""

from __future__ import annotations

from .experts import ExpertMatrix, FusedExperts, MoeBlock, find_fused_experts, find_moe_blocks, fused_parameter_of
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
    "ExpertMatrix",
    "FusedExperts",
    "MoeBlock",
    "find_fused_experts",
    "find_moe_blocks",
    "fused_parameter_of",
    "check_decoder_only",
    "find_decoder_layout",
    "find_prunable_linears",
    "get_weight",
    "is_prunable_linear",
    "set_weight",
]
