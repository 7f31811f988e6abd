"""Universal Dependencies treebank text of one language, local only (``ud@de``).

Reads ``<data_dir>/multilingual/<lang>/calib.jsonl`` (training or development text of a UD treebank) for
calibration; its held-apart evaluation text is ``pud.jsonl`` beside it (the Parallel UD sentences, the
same 1,000 sentences in every language), so ``ppl:ud@de`` is German PUD perplexity.
"""

from __future__ import annotations

from ..io import HubSpec
from ._language import LanguageSource

__all__ = ["UDSource"]


class UDSource(LanguageSource):
    """Local UD text: ``multilingual/<lang>/calib.jsonl``; evaluation text ``multilingual/<lang>/pud.jsonl``."""

    name = "ud"
    description = "Universal Dependencies treebank text of one language (local mirror multilingual/<lang>/); ud@de"
    hub = None
    local_dirs = ("multilingual",)
    local_patterns = ("calib*.jsonl",)
    eval_patterns = ("pud*.jsonl",)

    @classmethod
    def hub_for(cls, language: str) -> HubSpec | None:
        return None

    def dirs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"multilingual/{self.language}",)
