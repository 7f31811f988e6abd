"""``PruningReport``: what a prune actually did, measured per Linear and per block."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import read_json, write_json_atomic
from .errors import CheckpointError
from .records import BlockRecord, LayerRecord
from .version import __version__

__all__ = ["PruningReport", "REPORT_NAME", "library_versions"]

REPORT_NAME = "pruning_report.json"


def library_versions() -> dict[str, str]:
    """Versions of hf_calibprune and the libraries that shaped the result."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"hf_calibprune": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "datasets"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


@dataclass
class PruningReport:
    """Measured results of one prune.

    Args:
        method (`str`): the pruning method.
        pattern (`str`): ``"unstructured"``, ``"N:M"``, ``"channels"``, ``"blocks"`` or ``"experts"``.
        requested_sparsity (`float`): the configured target.
        overall_sparsity (`float`): measured fraction of zeros over every rank ≥ 2 weight inside the decoder
            blocks, pruned or not (routers, ignored Linears and weights the engine cannot prune count as they are);
            for the structured patterns, the measured fraction of the decoder blocks' parameters removed.
        layers (`list[LayerRecord]`): one record per pruned matrix (a Linear, or one expert's gate, up or down).
        blocks (`list[BlockRecord]`): one record per decoder block.
        calibration (`dict`, *optional*): the calibration fingerprint (sources, samples, seq_len, seed, token hash);
            ``None`` when no calibration data was used.
        layer_sparsity (`dict[str, float]`): requested sparsity per block (uniform or OWL).
        seconds (`float`): wall time of the whole prune.
        config (`dict`): the :class:`PruningConfig` that produced this report.
        versions (`dict[str, str]`): library versions.
        evaluation (`dict`): evaluation results added later (perplexity, accuracy), by task name.
        recovery (`list[dict]`): recovery fine-tuning runs applied afterwards (steps, adapter, loss, sparsity).
        pruned_sparsity (`float`): measured fraction of zeros over the pruned matrices only.
        dense_weights (`list[dict]`): rank ≥ 2 block weights left dense: ``name``, ``shape``, ``numel`` and
            ``reason`` (``"ignored"``, ``"router"``, ``"bias"`` or ``"unsupported"``).
        experts (`dict[str, dict]`): per fused experts module, ``tokens`` routed to each expert over the calibration
            data and the ``statistics`` each expert was pruned with (``"routed"`` or ``"all"``).
        execution (`dict`): how the prune ran: ``world_size`` (the number of processes), ``backend`` (``"gloo"``,
            ``"nccl"``; ``None`` for one process) and ``processes``, one ``{"rank", "samples", "devices"}`` per
            process: its share ``[start, stop)`` of the calibration samples and the devices its blocks ran on.
        structure (`dict`): for the structured patterns, parameters before and after (decoder blocks and whole
            model, counted from the weights) and what was removed per block (key/value groups, query heads, MLP
            channels, or blocks; for ``"experts"``, the experts removed from each MoE module with every expert's
            score and routed-token count); empty for mask patterns.
    """

    method: str
    pattern: str
    requested_sparsity: float
    overall_sparsity: float
    layers: list[LayerRecord] = field(default_factory=list)
    blocks: list[BlockRecord] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    evaluation: dict[str, Any] = field(default_factory=dict)
    recovery: list[dict[str, Any]] = field(default_factory=list)
    pruned_sparsity: float = 0.0
    dense_weights: list[dict[str, Any]] = field(default_factory=list)
    experts: dict[str, dict[str, list]] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        layers: list[LayerRecord],
        blocks: list[BlockRecord],
        *,
        zeros: int,
        total: int,
        dense_weights: list[dict[str, Any]] = (),
        **fields: Any,
    ) -> PruningReport:
        """Build a report: ``zeros`` of ``total`` elements counted over every rank ≥ 2 block weight give the overall
        figure; the per-matrix records give the pruned-only one and the experts' token counts."""
        pruned_total = sum(r.shape[0] * r.shape[1] for r in layers)
        pruned_zeros = sum(r.measured_sparsity * r.shape[0] * r.shape[1] for r in layers)
        return cls(
            overall_sparsity=zeros / total if total else 0.0,
            pruned_sparsity=pruned_zeros / pruned_total if pruned_total else 0.0,
            layers=layers,
            blocks=blocks,
            dense_weights=list(dense_weights),
            experts=_expert_summary(layers),
            **fields,
        )

    @property
    def dense_numel(self) -> int:
        """Elements of the block weights left dense."""
        return sum(int(weight["numel"]) for weight in self.dense_weights)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hf_calibprune_version"] = __version__
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        data = {k: v for k, v in data.items() if k != "hf_calibprune_version"}
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            data = {k: v for k, v in data.items() if k in known}
            data["layers"] = [LayerRecord(**record) for record in data.get("layers", [])]
            data["blocks"] = [BlockRecord(**record) for record in data.get("blocks", [])]
            return cls(**data)
        except TypeError as error:
            raise CheckpointError(f"the pruning report is missing or has malformed fields ({error}).") from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (to ``path``, or ``path/pruning_report.json`` for a directory)."""
        path = Path(path)
        return write_json_atomic(path / REPORT_NAME if path.is_dir() else path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningReport:
        path = Path(path)
        data = read_json(path / REPORT_NAME if path.is_dir() else path, "pruning report")
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a pruning report object.")
        return cls.from_dict(data)

    def summary_table(self) -> str:
        """A plain-text table: one row per block, then the total."""
        lines = [
            f"{'block':<24} {'target':>7} {'sparsity':>9} {'max error':>10} {'seconds':>8}",
            "-" * 62,
        ]
        for block in self.blocks:
            errors = [r.reconstruction_error for r in self.layers if r.block == block.index and r.reconstruction_error is not None]
            worst = f"{max(errors):10.4f}" if errors else f"{'-':>10}"
            lines.append(
                f"{block.name:<24} {block.requested_sparsity:7.3f} {block.measured_sparsity:9.4f} {worst} {block.seconds:8.2f}"
            )
        lines.append("-" * 62)
        if self.structure:  # structures were removed, not zeroed: the block rows give the fraction removed
            total = f"block parameters removed ({self.method}, {self.pattern})"
        else:
            lines.append(
                f"{'pruned matrices':<24} {self.requested_sparsity:7.3f} {self.pruned_sparsity:9.4f} {'':>10} {'':>8}"
            )
            total = f"all block weights ({self.method}, {self.pattern})"
        lines.append(f"{total:<24} {'':>7} {self.overall_sparsity:9.4f} {'':>10} {self.seconds:8.2f}")
        if self.dense_weights:
            reasons: dict[str, list[int]] = {}
            for weight in self.dense_weights:
                reasons.setdefault(weight["reason"], []).append(int(weight["numel"]))
            kept = ", ".join(f"{reason} {len(sizes)} ({sum(sizes):,} weights)" for reason, sizes in sorted(reasons.items()))
            lines.append(f"left dense: {kept}")
        for name, summary in self.experts.items():
            tokens = summary["tokens"]
            fallback = sum(1 for source in summary["statistics"] if source == "all")
            lines.append(
                f"{name}: {len(tokens)} experts, routed tokens min {min(tokens)} / max {max(tokens)}"
                + (f", {fallback} on all-token statistics" if fallback else "")
            )
        if self.structure:
            lines += _structure_lines(self.structure)
        return "\n".join(lines)


def _expert_summary(layers: list[LayerRecord]) -> dict[str, dict[str, list]]:
    """Routed tokens and statistics source per expert, per fused experts module, from the expert records."""
    summary: dict[str, dict[int, tuple[int, str]]] = {}
    for record in layers:
        if "tokens" not in record.info:
            continue
        summary.setdefault(record.info["experts"], {})[record.info["expert"]] = (record.info["tokens"], record.info["statistics"])
    return {
        module: {
            "tokens": [experts[i][0] for i in sorted(experts)],
            "statistics": [experts[i][1] for i in sorted(experts)],
        }
        for module, experts in summary.items()
    }


def _structure_lines(structure: dict[str, Any]) -> list[str]:
    """What a structured prune removed: parameter counts, then per block (or the removed blocks)."""
    lines = [
        f"decoder parameters: {structure['parameters_before']:,} -> {structure['parameters_after']:,}; "
        f"model parameters: {structure['model_parameters_before']:,} -> {structure['model_parameters_after']:,}"
    ]
    if structure.get("removed_blocks") is not None:
        lines.append(f"removed blocks: {', '.join(structure['removed_blocks']) or 'none'}")
    if structure.get("removed_experts") is not None:
        lines.append(f"routed experts per MoE block: {structure['experts_before']} -> {structure['experts_after']}")
    for name, experts in (structure.get("removed_experts") or {}).items():
        lines.append(f"{name}: removed experts {experts or '-'}")
    for name, removed in (structure.get("removed") or {}).items():
        lines.append(
            f"{name}: removed query heads {removed['heads'] or '-'} (key/value groups {removed['kv_groups'] or '-'}), "
            f"{len(removed['channels'])} MLP channels"
        )
    return lines
