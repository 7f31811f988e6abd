"""Wikipedia: one language's dump of ``wikimedia/wikipedia`` (``wikipedia@de``)."""

from __future__ import annotations

from ..io import HubSpec
from ._language import LanguageSource

__all__ = ["WikipediaSource"]


class WikipediaSource(LanguageSource):
    """``wikimedia/wikipedia`` configuration ``20231101.<lang>`` train, first 5,000 articles, streamed."""

    name = "wikipedia"
    description = "Wikipedia articles of one language (wikimedia/wikipedia 20231101.<lang>); wikipedia@de"
    dump = "20231101"
    hub = HubSpec("wikimedia/wikipedia", name=f"{dump}.en", split="train", streaming=True, max_rows=5000)

    @classmethod
    def hub_for(cls, language: str) -> HubSpec:
        return HubSpec("wikimedia/wikipedia", name=f"{cls.dump}.{language}", split="train", streaming=True, max_rows=5000)
