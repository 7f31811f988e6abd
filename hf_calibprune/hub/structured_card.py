"""The model card's lines for a structurally pruned model: parameter counts and what was removed.

Kept apart from :mod:`hf_calibprune.hub.card` as plain functions of the report, so the card template can
take them over as they are.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["structure_intro", "structure_lines"]

_REMOVED = {
    "channels": "attention heads and MLP channels",
    "blocks": "whole decoder blocks",
    "experts": "whole routed experts of its Mixture-of-Experts blocks",
}


def structure_intro(report: Mapping[str, Any], source: str, method: str) -> str | None:
    """The card's first sentence for a structured prune, or ``None`` for a mask pattern."""
    structure = report.get("structure") or {}
    if not structure:
        return None
    what = _REMOVED[structure.get("pattern", "channels")]
    return (
        f"This model is {source} with {what} removed by **{method}** with "
        "[hf_calibprune](https://pypi.org/project/hf_calibprune/), chosen on calibration data. It is an ordinary "
        "dense checkpoint with a smaller config: it loads and runs with plain transformers (and any runtime that "
        "reads the architecture), with no zeros to exploit. Parameter counts below were counted from the weights."
    )


def structure_lines(report: Mapping[str, Any]) -> list[str]:
    """Markdown rows and a per-block table of what a structured prune removed (empty for mask patterns)."""
    structure = report.get("structure") or {}
    if not structure:
        return []
    lines = [
        "",
        "### Structure removed",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| parameters (whole model) | {structure['model_parameters_before']:,} | {structure['model_parameters_after']:,} |",
        f"| parameters (decoder blocks) | {structure['parameters_before']:,} | {structure['parameters_after']:,} |",
        "",
        f"Measured fraction of decoder parameters removed: {100 * structure['removed_fraction']:.2f} %.",
    ]
    if structure.get("pattern") == "blocks":
        lines += ["", "Removed decoder blocks: " + (", ".join(f"`{b}`" for b in structure["removed_blocks"]) or "none") + "."]
        return lines
    if structure.get("pattern") == "experts":
        lines += [
            "",
            f"Routed experts per MoE block: {structure['experts_before']} -> {structure['experts_after']} "
            "(shared experts kept).",
            "",
            "| MoE block | experts removed |",
            "|---|---|",
        ]
        for name, experts in structure["removed_experts"].items():
            lines.append(f"| {name} | {', '.join(map(str, experts)) or '–'} |")
        return lines
    if structure.get("bias_compensation"):
        lines += ["", "Bias compensation (FLAP) folded into: " + ", ".join(structure["bias_compensation"]) + " output projections."]
    lines += ["", "| block | query heads removed | key/value groups removed | MLP channels removed |", "|---|---|---|---|"]
    for name, removed in (structure.get("removed") or {}).items():
        heads = ", ".join(map(str, removed["heads"])) or "–"
        groups = ", ".join(map(str, removed["kv_groups"])) or "–"
        lines.append(f"| {name} | {heads} | {groups} | {len(removed['channels'])} |")
    return lines
