"""RTE: recognizing textual entailment (GLUE/SuperGLUE)."""

from __future__ import annotations

from typing import Any

from ..io import HubSpec
from ._nli import NLI_ANSWER, NLI_PROMPT
from .base import TaskSource

__all__ = ["RTESource"]


class RTESource(TaskSource):
    """``yangwang825/rte`` ``main`` train (``text1``, ``text2``, ``label_text``); locally jiant's ``rte/train.jsonl``."""

    name = "rte"
    description = "RTE textual entailment (entailment / not_entailment)"
    hub = HubSpec("yangwang825/rte", name="main", split="train")
    local_patterns = ("train.jsonl", "train*.jsonl")
    eval_patterns = ("val.jsonl", "validation*.jsonl")
    fields = ("premise", "hypothesis", "label")
    prompt_template = NLI_PROMPT
    answer_template = NLI_ANSWER
    reference = "lib/data.py get_rte"

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        if "text1" in row:
            return {"premise": row["text1"], "hypothesis": row["text2"], "label": row["label_text"]}
        label = row["label"]
        if isinstance(label, int):  # GLUE's ids
            label = ("entailment", "not_entailment")[label]
        return {"premise": row["premise"], "hypothesis": row["hypothesis"], "label": label}
