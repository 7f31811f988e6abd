"""WinoGrande: pronoun resolution with two options."""

from __future__ import annotations

from typing import Any

from ..io import HubSpec
from .base import TaskSource

__all__ = ["WinoGrandeSource"]


class WinoGrandeSource(TaskSource):
    """``allenai/winogrande`` ``winogrande_m`` train (the study's ``winogrande``); locally ``winogrande/validation.jsonl``."""

    name = "winogrande"
    description = "WinoGrande two-option commonsense (winogrande_m)"
    hub = HubSpec("allenai/winogrande", name="winogrande_m", split="train", study_id="winogrande")
    local_patterns = ("train*.jsonl", "validation.jsonl", "*.jsonl")
    fields = ("sentence", "option1", "option2", "answer")
    prompt_template = "Sentence: {sentence}\nOptions:\n1. {option1}\n2. {option2}\nAnswer: "
    answer_template = "Sentence: {sentence}\nOptions:\n1. {option1}\n2. {option2}\nAnswer: {answer}"
    reference = "lib/data.py get_winogrande"

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        if not str(row["answer"]).strip():
            return None
        return {k: row[k] for k in ("sentence", "option1", "option2")} | {"answer": str(row["answer"])}
