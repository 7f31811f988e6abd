"""SVAMP: arithmetic word problems with equations; CoT from distilling step-by-step's PaLM rationales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import HubSpec
from .base import LoadRequest, TaskSource, read_with_llm_rationales

__all__ = ["SVAMPSource", "parse_svamp_rationale"]


def parse_svamp_rationale(output: str) -> str | None:
    """The study's ``SVAMPDatasetLoader._parse_llm_output``: text before the next ``Q:``, before ``The answer is``."""
    text = output.split("Q:")[0].rstrip()
    rationale, sep, _ = text.partition("The answer is")
    return rationale.rstrip() if sep and rationale.strip() else None


class SVAMPSource(TaskSource):
    """``ChilleD/SVAMP`` train (``Body``, ``Question``, ``Equation``); locally ``svamp/SVAMP.json``.

    ``cot`` follows the study's ``get_svamp_rationale``: the 800-row train split of distilling step-by-step
    (``dsbs_svamp_train.jsonl``, ``input``/``label``) with the aligned ``llm_cot/train_CoT_*.json`` outputs.
    """

    name = "svamp"
    description = "SVAMP arithmetic word problems; CoT from local distilling-step-by-step rationale files"
    hub = HubSpec("ChilleD/SVAMP", split="train")
    local_patterns = ("SVAMP.json", "train*.json*", "*.json")
    formats = ("plain", "zero", "single", "icl", "cot")
    fields = ("Body", "Question", "Equation")
    prompt_template = "Question: {question}\nAnswer: "
    answer_template = "Question: {question}\nAnswer: {answer}"
    # The study's template, verbatim: no "Question: " prefix and no final period.
    cot_template = "{input}\nAnswer: {rationale}. So the answer is {label}"
    reference = "lib/data.py get_svamp, get_svamp_rationale"

    @classmethod
    def rationale_note(cls) -> str:
        return (
            "SVAMP rationales are the PaLM outputs of distilling step-by-step, read locally from "
            "svamp/dsbs_svamp_train.jsonl + svamp/llm_cot/train_CoT_*.json (no Hub copy)."
        )

    def patterns(self, fmt: str) -> tuple[str, ...]:
        if fmt == "cot":
            return ("dsbs_svamp_train.jsonl",)
        return self.local_patterns

    def read_local(self, paths: list[Path], fmt: str) -> list[dict[str, Any]]:
        if fmt != "cot":
            return super().read_local(paths, fmt)
        return read_with_llm_rationales(
            paths, source=self.name, pattern="llm_cot/train_CoT_*.json", parse=parse_svamp_rationale
        )

    def load_hub(self, request: LoadRequest, fmt: str):
        if fmt == "cot":
            from ...errors import CalibrationError

            raise CalibrationError(f"Format 'cot' of 'svamp' has no Hub source. {self.rationale_note()}")
        return super().load_hub(request, fmt)

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        if "Body" in row:
            question = f"{row['Body']} {row['Question']}"
            answer = row["Equation"]
            return {"question": question, "answer": answer, "input": f"{row['Body']}\n{row['Question']}",
                    "label": answer, "rationale": row.get("llm_rationale") or ""}
        # distilling step-by-step schema: input = "Body\nQuestion", label = equation
        return {
            "question": str(row["input"]).replace("\n", " "),
            "answer": row["label"],
            "input": row["input"],
            "label": row["label"],
            "rationale": row.get("llm_rationale") or "",
        }
