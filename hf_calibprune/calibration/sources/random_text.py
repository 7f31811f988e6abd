"""The study's "random" baseline: random alphanumeric strings."""

from __future__ import annotations

import random
import string
from typing import ClassVar

from .base import SyntheticSource

__all__ = ["RandomSource"]


class RandomSource(SyntheticSource):
    """Strings of 1,000 characters drawn uniformly from ``A-Za-z0-9``, tokenized and concatenated past
    ``seq_len``; each sample keeps its first ``seq_len`` tokens (``get_random``)."""

    name = "random"
    description = "random alphanumeric strings (the study's baseline)"
    reference = "lib/data.py get_random"
    alphabet: ClassVar[str] = string.ascii_uppercase + string.ascii_lowercase + string.digits
    length: ClassVar[int] = 1000

    def texts(self, count: int, rng: random.Random) -> list[str]:
        return ["".join(rng.choice(self.alphabet) for _ in range(self.length)) for _ in range(count)]
