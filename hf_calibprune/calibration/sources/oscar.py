"""OSCAR, unshuffled and deduplicated, one language per subset (``oscar@fr``)."""

from __future__ import annotations

from ..io import HubSpec
from ._language import LanguageSource

__all__ = ["OscarSource"]


class OscarSource(LanguageSource):
    """``oscar`` ``unshuffled_deduplicated_<lang>`` train, first 5,000 documents (the study's ``train[:5000]``, en)."""

    name = "oscar"
    description = "OSCAR web crawl, unshuffled_deduplicated_en (first 5,000 train documents)"
    hub = HubSpec("oscar", name="unshuffled_deduplicated_en", split="train", streaming=True, max_rows=5000)
    reference = "lib/data.py get_oscar"

    @classmethod
    def hub_for(cls, language: str) -> HubSpec:
        return HubSpec("oscar", name=f"unshuffled_deduplicated_{language}", split="train", streaming=True, max_rows=5000)
