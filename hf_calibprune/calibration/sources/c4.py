"""C4: the calibration set of Wanda and SparseGPT (first shard of ``allenai/c4`` ``en``); ``c4@de`` for mC4 German."""

from __future__ import annotations

from ..io import HubSpec
from ._language import LanguageSource

__all__ = ["C4Source"]


class C4Source(LanguageSource):
    """``allenai/c4`` ``en/c4-train.00000-of-01024.json.gz`` at the study's pinned revision, streamed.

    Streaming reads the first 20,000 documents of the shard (Wanda/SparseGPT draw from all 356,317);
    samples are a random document longer than ``seq_len`` and a random window in it. Another language
    (``c4@de``) streams that language's configuration of ``allenai/c4`` (mC4), first 20,000 documents.
    """

    name = "c4"
    description = "Colossal Clean Crawled Corpus, en train shard 00000 (Wanda/SparseGPT's calibration set)"
    hub = HubSpec(
        "allenai/c4",
        split="train",
        revision="607bd4c8450a42878aa9ddc051a65a055450ef87",
        data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
        streaming=True,
        max_rows=20000,
    )
    local_patterns = ("c4-train.*.json*", "*.jsonl", "*.json", "*.jsonl.gz", "*.json.gz")
    reference = "lib/data.py get_c4"

    @classmethod
    def hub_for(cls, language: str) -> HubSpec:
        if language == cls.default_language:
            return cls.hub
        return HubSpec("allenai/c4", name=language, split="train", streaming=True, max_rows=20000)
