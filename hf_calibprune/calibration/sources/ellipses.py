"""The study's "ellipses" baseline: nothing but dots."""

from __future__ import annotations

import random
from typing import ClassVar

from .base import SyntheticSource

__all__ = ["EllipsesSource"]


class EllipsesSource(SyntheticSource):
    """``"." * 1000`` tokenized and repeated past ``seq_len``; each sample keeps its first ``seq_len`` tokens
    (``get_ellipses``). Every sample is the same sequence."""

    name = "ellipses"
    description = "'.' repeated (the study's content-free baseline)"
    reference = "lib/data.py get_ellipses"
    text: ClassVar[str] = "." * 1000

    def texts(self, count: int, rng: random.Random) -> list[str]:
        return [self.text] * count

    def build_ids(self, tokenizer, num_samples: int, seq_len: int, rng) -> list[list[int]]:
        # Tokenize once: the study's loop re-tokenizes the same string, which gives the same ids.
        chunk = tokenizer(self.text, add_special_tokens=True, verbose=False)["input_ids"]
        if not chunk:
            from ...errors import CalibrationError

            raise CalibrationError("The tokenizer turned the ellipses text into no tokens.")
        ids: list[int] = []
        while len(ids) <= seq_len:
            ids.extend(chunk)
        return [list(ids[:seq_len]) for _ in range(num_samples)]
