"""RACE: reading comprehension from English exams."""

from __future__ import annotations

from typing import Any

from ..io import HubSpec
from .base import TaskSource

__all__ = ["RACESource"]


class RACESource(TaskSource):
    """``ehovy/race`` ``all`` train (the study's ``race``); locally ``race/race_subset1000.jsonl``."""

    name = "race"
    description = "RACE reading comprehension (article, question, four options)"
    hub = HubSpec("ehovy/race", name="all", split="train", study_id="race")
    local_patterns = ("race_train*.jsonl", "train*.jsonl", "race*.jsonl")
    fields = ("article", "question", "options", "answer")
    prompt_template = "Article: {article}\nQuestion: {question}\nOptions:\n{options}\nAnswer: "
    answer_template = "Article: {article}\nQuestion: {question}\nOptions:\n{options}\nAnswer: {answer}"
    reference = "lib/data.py get_race"

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        letters = "ABCDE"
        # The study's formatting: every option line ends in a newline, so a blank line precedes "Answer:".
        options = "".join(f"{letters[i]}. {option}\n" for i, option in enumerate(row["options"]))
        return {"article": row["article"], "question": row["question"], "options": options, "answer": row["answer"]}
