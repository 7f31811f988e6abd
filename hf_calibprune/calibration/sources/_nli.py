"""The study's NLI template, shared by e-SNLI, ANLI and RTE."""

from __future__ import annotations

__all__ = ["NLI_CLASSES", "NLI_PROMPT", "NLI_ANSWER", "NLI_COT", "nli_label"]

NLI_CLASSES = ("entailment", "neutral", "contradiction")
NLI_PROMPT = "Premise: {premise}\nHypothesis: {hypothesis}\nLabel: "
NLI_ANSWER = "Premise: {premise}\nHypothesis: {hypothesis}\nLabel: {label}"
NLI_COT = "Premise: {premise}\nHypothesis: {hypothesis}\nLabel: {rationale} So the answer is {label}."


def nli_label(value: object) -> str | None:
    """``0/1/2`` -> class name; strings pass through; anything else (SNLI's ``-1``) -> `None`."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return value
    index = int(value)  # type: ignore[arg-type]
    return NLI_CLASSES[index] if 0 <= index < len(NLI_CLASSES) else None
