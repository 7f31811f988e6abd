"""RedPajama-Data-V2 (the ``sample`` config)."""

from __future__ import annotations

from ..io import HubSpec
from .base import DocumentSource

__all__ = ["RedPajamaSource"]


class RedPajamaSource(DocumentSource):
    """``togethercomputer/RedPajama-Data-V2`` ``sample`` train, text in ``raw_content`` (first 5,000 documents)."""

    name = "redpajama"
    description = "RedPajama-Data-V2 sample (field raw_content, first 5,000 documents)"
    hub = HubSpec("togethercomputer/RedPajama-Data-V2", name="sample", split="train", streaming=True, max_rows=5000)
    text_field = "raw_content"
    reference = "lib/data.py get_redpajama"

    def pool_from_rows(self, rows, fmt, request, origin):
        # Local copies often carry the text as "text"; the Hub rows carry "raw_content".
        if request.text_field is None and rows and "raw_content" not in rows[0] and "text" in rows[0]:
            from dataclasses import replace

            request = replace(request, text_field="text")
        return super().pool_from_rows(rows, fmt, request, origin)
