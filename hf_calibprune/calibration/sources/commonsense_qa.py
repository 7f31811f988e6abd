"""CommonsenseQA: five-way multiple choice; CoT from distilling step-by-step's PaLM rationales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CalibrationError
from ..io import HubSpec
from .base import LoadRequest, TaskSource, read_with_llm_rationales

__all__ = ["CommonsenseQASource", "parse_cqa_rationale"]

_LETTERS = "ABCDE"


def parse_cqa_rationale(output: str) -> str | None:
    """Text before the next ``Q:``, before ``So the answer is`` (distilling step-by-step's CQA parser)."""
    text = output.split("Q:")[0].rstrip()
    rationale, sep, _ = text.partition("So the answer is")
    return rationale.strip() if sep and rationale.strip() else None


class CommonsenseQASource(TaskSource):
    """``tau/commonsense_qa`` train (the study's ``commonsense_qa``); locally ``commonsense_qa/cqa_train.jsonl``.

    The local schema (``choices`` as a list, ``answer`` as text) maps to the Hub's letters ``A``-``E``.
    The study has no CommonsenseQA CoT; ``cot`` here appends the aligned ``llm_cot/train_CoT_*.json``
    rationale in the study's NLI style (``{rationale} So the answer is {answerKey}.``).
    """

    name = "commonsense_qa"
    description = "CommonsenseQA multiple choice; CoT from local distilling-step-by-step rationale files"
    hub = HubSpec("tau/commonsense_qa", split="train", study_id="commonsense_qa")
    local_patterns = ("cqa_train.jsonl", "train*.jsonl")
    eval_patterns = ("cqa_validation.jsonl", "validation*.jsonl")
    formats = ("plain", "zero", "single", "icl", "cot")
    fields = ("question", "choices", "answerKey")
    prompt_template = "Question: {question}\nChoices:\n{choices}\nAnswer: "
    answer_template = "Question: {question}\nChoices:\n{choices}\nAnswer: {answerKey}"
    cot_template = "Question: {question}\nChoices:\n{choices}\nAnswer: {rationale} So the answer is {answerKey}."
    reference = "lib/data.py get_commonsense_qa"

    @classmethod
    def rationale_note(cls) -> str:
        return (
            "CommonsenseQA rationales are the PaLM outputs of distilling step-by-step, read locally from "
            "commonsense_qa/cqa_train.jsonl + commonsense_qa/llm_cot/train_CoT_*.json (no Hub copy)."
        )

    def read_local(self, paths: list[Path], fmt: str) -> list[dict[str, Any]]:
        if fmt != "cot":
            return super().read_local(paths, fmt)
        return read_with_llm_rationales(
            paths, source=self.name, pattern="llm_cot/train_CoT_*.json", parse=parse_cqa_rationale
        )

    def load_hub(self, request: LoadRequest, fmt: str):
        if fmt == "cot":
            raise CalibrationError(f"Format 'cot' of 'commonsense_qa' has no Hub source. {self.rationale_note()}")
        return super().load_hub(request, fmt)

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        choices = row["choices"]
        if isinstance(choices, dict):  # Hub schema: {"label": [...], "text": [...]}
            labels, texts = list(choices["label"]), list(choices["text"])
            key = row["answerKey"]
        else:  # distilling step-by-step schema: list of texts + answer text
            texts = list(choices)
            labels = list(_LETTERS[: len(texts)])
            key = _LETTERS[texts.index(row["answer"])]
        if not key:
            return None
        formatted = "\n".join(f"{letter}. {text}" for letter, text in zip(labels, texts))
        return {
            "question": row["question"],
            "choices": formatted,
            "answerKey": key,
            "rationale": row.get("llm_rationale") or "",
        }
