"""The Pile (uncopyrighted subset)."""

from __future__ import annotations

from ..io import HubSpec
from .base import DocumentSource

__all__ = ["PileSource"]


class PileSource(DocumentSource):
    """``monology/pile-uncopyrighted`` train, first 5,000 documents (the study's ``train[:5000]``), streamed."""

    name = "pile"
    description = "The Pile, uncopyrighted subset (first 5,000 train documents)"
    hub = HubSpec("monology/pile-uncopyrighted", split="train", streaming=True, max_rows=5000)
    reference = "lib/data.py get_pile"
