"""MAWPS: math word problems with equations."""

from __future__ import annotations

import re
from typing import Any

from ..io import HubSpec
from .base import TaskSource

__all__ = ["MAWPSSource"]

_PREFIX = re.compile(r"^\s*[xX]\s*=\s*")


class MAWPSSource(TaskSource):
    """``MU-NLPC/Calc-mawps`` train (``question``, ``expression``); locally MWPToolkit's ``mawps/trainset.json``.

    The local schema maps ``question`` <- ``original_text`` and ``expression`` <- ``equation`` without ``x=``.
    """

    name = "mawps"
    description = "MAWPS math word problems with equations"
    hub = HubSpec("MU-NLPC/Calc-mawps", split="train")
    local_patterns = ("trainset.json", "train*.json*", "MAWPS.json")
    eval_patterns = ("testset.json",)
    fields = ("question", "expression")
    prompt_template = "Question: {question}\nAnswer: "
    answer_template = "Question: {question}\nAnswer: {expression}"
    reference = "lib/data.py get_mawps"

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        if "original_text" in row:
            return {"question": row["original_text"], "expression": _PREFIX.sub("", str(row["equation"]))}
        return {"question": row["question"], "expression": row["expression"]}
