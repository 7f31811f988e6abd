"""BoolQ: yes/no questions about a Wikipedia passage."""

from __future__ import annotations

from typing import Any

from ..io import HubSpec
from .base import TaskSource

__all__ = ["BoolQSource"]


class BoolQSource(TaskSource):
    """``google/boolq`` train (the study's ``boolq``); locally ``boolq/validation.jsonl`` (``label`` 1/0).

    The study's template puts the passage and the question together with no separator; kept as is.
    """

    name = "boolq"
    description = "BoolQ yes/no reading comprehension"
    hub = HubSpec("google/boolq", split="train", study_id="boolq")
    local_patterns = ("train*.jsonl", "validation.jsonl", "*.jsonl")
    fields = ("passage", "question", "answer")
    prompt_template = "Question: {question}\nAnswer: "
    answer_template = "Question: {question}\nAnswer: {answer}"
    reference = "lib/data.py get_boolq"

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        answer = row["answer"] if "answer" in row else bool(int(row["label"]))
        if isinstance(answer, str):
            answer = answer.strip().lower() in ("true", "1", "yes")
        return {"question": f"{row['passage']}{row['question']}", "answer": str(bool(answer))}
