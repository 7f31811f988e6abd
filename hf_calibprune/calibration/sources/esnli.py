"""e-SNLI: SNLI with human explanations (CoT from ``explanation_1``)."""

from __future__ import annotations

from typing import Any

from ..io import HubSpec
from ._nli import NLI_ANSWER, NLI_COT, NLI_PROMPT, nli_label
from .base import TaskSource

__all__ = ["ESNLISource"]


class ESNLISource(TaskSource):
    """``esnli`` train (``premise``, ``hypothesis``, ``label``, ``explanation_1``); locally ``esnli/esnli_valid.jsonl``."""

    name = "esnli"
    description = "e-SNLI natural language inference; CoT from explanation_1"
    hub = HubSpec("esnli", split="train")
    local_patterns = ("esnli_train.jsonl", "*train*.jsonl", "esnli_valid.jsonl", "*valid*.jsonl")
    eval_patterns = ("esnli_test.jsonl",)
    formats = ("plain", "zero", "single", "icl", "cot")
    fields = ("premise", "hypothesis", "label", "explanation_1")
    prompt_template = NLI_PROMPT
    answer_template = NLI_ANSWER
    cot_template = NLI_COT
    reference = "lib/data.py get_esnli"

    @classmethod
    def rationale_note(cls) -> str:
        return "e-SNLI's rationale is its first human explanation (explanation_1)."

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        label = nli_label(row["label"])
        if label is None:
            return None
        return {
            "premise": row["premise"],
            "hypothesis": row["hypothesis"],
            "label": label,
            "rationale": row.get("explanation_1") or "",
        }
