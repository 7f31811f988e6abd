"""ANLI rounds 1-3 (CoT from the annotators' ``reason``)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..io import HubSpec
from ._nli import NLI_ANSWER, NLI_COT, NLI_PROMPT, nli_label
from .base import TaskSource

__all__ = ["ANLIR1Source", "ANLIR2Source", "ANLIR3Source"]

# The study pins this commit of the ANLI dataset repo.
_REVISION = "bf206833154d4fcaf5e3b01b8bf17d4d15213cb1"


class _ANLISource(TaskSource):
    round: ClassVar[int] = 1
    formats = ("plain", "zero", "single", "icl", "cot")
    fields = ("premise", "hypothesis", "label", "reason")
    prompt_template = NLI_PROMPT
    answer_template = NLI_ANSWER
    cot_template = NLI_COT
    local_dirs = ("anli",)
    reference = "lib/data.py get_anli"

    @classmethod
    def rationale_note(cls) -> str:
        return "ANLI's rationale is the annotator's 'reason' (empty for some rows, which cot skips)."

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        label = nli_label(row["label"])
        if label is None:
            return None
        return {
            "premise": row["premise"],
            "hypothesis": row["hypothesis"],
            "label": label,
            "rationale": row.get("reason") or "",
        }


class ANLIR1Source(_ANLISource):
    """ANLI round 1: ``facebook/anli`` split ``train_r1`` (the study's ``anli``); locally ``anli/anli_r1_dev.jsonl``."""

    name = "anli_r1"
    round = 1
    description = "Adversarial NLI round 1; CoT from the annotators' reasons"
    hub = HubSpec("facebook/anli", split="train_r1", revision=_REVISION, study_id="anli")
    local_dirs = ("anli", "anli_r1")
    local_patterns = ("anli_r1_train.jsonl", "anli_r1_dev.jsonl", "anli_r1_valid*.jsonl")
    eval_patterns = ("anli_r1_test.jsonl",)


class ANLIR2Source(_ANLISource):
    """ANLI round 2: ``facebook/anli`` split ``train_r2``; locally ``anli/anli_r2_{train,dev}.jsonl``."""

    name = "anli_r2"
    round = 2
    description = "Adversarial NLI round 2; CoT from the annotators' reasons"
    hub = HubSpec("facebook/anli", split="train_r2", revision=_REVISION, study_id="anli")
    local_dirs = ("anli", "anli_r2")
    local_patterns = ("anli_r2_train.jsonl", "anli_r2_dev.jsonl", "anli_r2_valid*.jsonl")


class ANLIR3Source(_ANLISource):
    """ANLI round 3: ``facebook/anli`` split ``train_r3``; locally ``anli/anli_r3_{train,dev}.jsonl``."""

    name = "anli_r3"
    round = 3
    description = "Adversarial NLI round 3; CoT from the annotators' reasons"
    hub = HubSpec("facebook/anli", split="train_r3", revision=_REVISION, study_id="anli")
    local_dirs = ("anli", "anli_r3")
    local_patterns = ("anli_r3_train.jsonl", "anli_r3_dev.jsonl", "anli_r3_valid*.jsonl")
