"""OSCAR (English, unshuffled and deduplicated)."""

from __future__ import annotations

from ..io import HubSpec
from .base import DocumentSource

__all__ = ["OscarSource"]


class OscarSource(DocumentSource):
    """``oscar`` ``unshuffled_deduplicated_en`` train, first 5,000 documents (the study's ``train[:5000]``)."""

    name = "oscar"
    description = "OSCAR web crawl, unshuffled_deduplicated_en (first 5,000 train documents)"
    hub = HubSpec("oscar", name="unshuffled_deduplicated_en", split="train", streaming=True, max_rows=5000)
    reference = "lib/data.py get_oscar"
