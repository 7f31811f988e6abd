"""GSM8K: grade-school math word problems with worked solutions."""

from __future__ import annotations

from typing import Any

from ..io import HubSpec
from .base import TaskSource

__all__ = ["GSM8KSource"]


class GSM8KSource(TaskSource):
    """``openai/gsm8k`` ``main`` train (the study's ``gsm8k``); the answer splits at ``####`` into rationale and label."""

    name = "gsm8k"
    description = "GSM8K grade-school math; CoT from the reference solutions"
    hub = HubSpec("openai/gsm8k", name="main", split="train", study_id="gsm8k")
    local_patterns = ("train.jsonl", "train*.jsonl")
    eval_patterns = ("test.jsonl", "test.shared.jsonl", "test*.jsonl")
    formats = ("plain", "zero", "single", "icl", "cot")
    fields = ("question", "answer")
    prompt_template = "Question: {question}\nAnswer: "
    answer_template = "Question: {question}\nAnswer: {label}"
    cot_template = "Question: {question}\nAnswer: {rationale}. So the answer is {label}."
    reference = "lib/data.py get_gsm8k"

    @classmethod
    def rationale_note(cls) -> str:
        return "GSM8K's rationale is the reference solution before '####'."

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        question, answer = row["question"], row["answer"]
        if not str(question).strip():
            return None
        rationale, sep, label = str(answer).partition("####")
        if not sep:
            return {"question": question, "rationale": "", "label": str(answer).strip()}
        return {"question": question, "rationale": rationale.strip(), "label": label.strip()}
