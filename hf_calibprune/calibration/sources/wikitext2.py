"""WikiText-2 (raw), joined into one stream as Wanda/SparseGPT do."""

from __future__ import annotations

from ..io import HubSpec
from .base import DocumentSource

__all__ = ["WikiText2Source"]


class WikiText2Source(DocumentSource):
    """``Salesforce/wikitext`` ``wikitext-2-raw-v1`` train (the study's ``wikitext``), rows joined with a space.

    Samples are random ``seq_len`` windows of the joined, tokenized text (``get_wikitext2``).
    """

    name = "wikitext2"
    description = "WikiText-2 raw, rows joined with ' ' and cut at random windows"
    hub = HubSpec("Salesforce/wikitext", name="wikitext-2-raw-v1", split="train", study_id="wikitext")
    join = " "
    local_patterns = ("train*.jsonl", "wiki.train.raw", "*train*", "*.jsonl", "*.raw", "*.txt")
    reference = "lib/data.py get_wikitext2"
