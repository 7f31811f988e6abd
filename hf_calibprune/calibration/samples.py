"""`CalibrationSamples`: the token tensors handed to the engine, and the fingerprint kept in the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CalibrationError

__all__ = ["CalibrationSamples"]


@dataclass(frozen=True)
class CalibrationSamples:
    """Calibration token ids, their attention mask and a JSON-able description of how they were made.

    Args:
        input_ids (`torch.LongTensor` of shape `(num_samples, seq_len)`): token ids.
        attention_mask (`torch.LongTensor` of shape `(num_samples, seq_len)`): 1 for real tokens, 0 for
            right padding (only formats that put a fixed number of examples in a sample pad). Statistics
            must skip positions where it is 0.
        fingerprint (`dict`): sources (Hub ids, revisions, local files), format, shots, num_samples, seq_len,
            seed, and ``token_sha256``, the SHA-256 of ``input_ids`` as little-endian int64 bytes.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    fingerprint: dict[str, Any]

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise CalibrationError(
                f"input_ids {tuple(self.input_ids.shape)} and attention_mask {tuple(self.attention_mask.shape)} "
                "must both be [num_samples, seq_len]."
            )
        if self.input_ids.dtype != torch.long or self.attention_mask.dtype != torch.long:
            raise CalibrationError("input_ids and attention_mask must be torch.long tensors.")

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens."""
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.num_samples

    def describe(self) -> str:
        """One line: shape, sources with formats and shares, seed, real tokens and the token hash."""
        parts = []
        for source in self.fingerprint.get("sources", []):
            label = source.get("name", "?")
            fmt = source.get("format")
            if fmt and fmt != "plain":
                label += f":{fmt}"
            if source.get("shots") is not None and fmt in ("icl", "cot"):
                label += f" ({source['shots']}-shot)"
            if len(self.fingerprint.get("sources", [])) > 1:
                label += f" x{source.get('num_samples', 0)}"
            parts.append(label)
        sha = str(self.fingerprint.get("token_sha256", ""))[:12]
        return (
            f"{self.num_samples} x {self.seq_len} tokens from {', '.join(parts) or 'unknown'}; "
            f"seed {self.fingerprint.get('seed')}; {self.num_tokens} real tokens; sha256 {sha}"
        )
