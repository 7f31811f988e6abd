"""A study's outputs: ``results.csv``, ``results.md``, one PNG per metric and ``summary.txt``."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

__all__ = ["METRIC_LABELS", "write_outputs", "results_rows", "markdown_table", "summarize", "plot_metric"]

_BASE_COLUMNS = (
    "run_id",
    "method",
    "sparsity",
    "pattern",
    "calibration",
    "format",
    "requested_format",
    "overall_sparsity",
    "parameters",
)
_TAIL_COLUMNS = ("prune_seconds", "eval_seconds", "status")

METRIC_LABELS = {"ppl": "perplexity (lower is better)", "acc": "accuracy (higher is better)", "acc_norm": "normalized accuracy (higher is better)"}


def _lower_is_better(metric: str) -> bool:
    return metric.endswith("/ppl")


def _metric_names(records: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for record in records:
        for name in record.get("metrics", {}):
            if name not in names:
                names.append(name)
    return names


def results_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows (one per run, the dense baseline first) for the CSV and markdown tables."""
    metrics = _metric_names(records)
    columns = [*_BASE_COLUMNS, *metrics, *_TAIL_COLUMNS]
    rows = []
    for record in sorted(records, key=lambda r: r.get("method") != "dense"):
        row = {column: record.get(column, "") for column in _BASE_COLUMNS + _TAIL_COLUMNS}
        for name in metrics:
            row[name] = record.get("metrics", {}).get(name, "")
        rows.append(row)
    return columns, rows


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _format(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def summarize(records: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """A short text naming the best calibration choice per metric, against the dense baseline."""
    dense = next((r for r in records if r.get("method") == "dense" and r.get("status") == "ok"), None)
    pruned = [r for r in records if r.get("method") != "dense" and r.get("status") == "ok"]
    lines = []
    for metric in _metric_names(records):
        candidates = [r for r in pruned if isinstance(r["metrics"].get(metric), (int, float)) and math.isfinite(r["metrics"][metric])]
        if not candidates:
            continue
        lower = _lower_is_better(metric)
        best = (min if lower else max)(candidates, key=lambda r: r["metrics"][metric])
        worst = (max if lower else min)(candidates, key=lambda r: r["metrics"][metric])
        if best["metrics"][metric] == worst["metrics"][metric]:
            text = f"{metric}: all {len(candidates)} pruned runs tie at {best['metrics'][metric]:.4f}"
        else:
            text = (
                f"{metric}: best calibration {best['calibration']} ({best['format']}, {best['method']}) = "
                f"{best['metrics'][metric]:.4f}; worst {worst['calibration']} ({worst['format']}, {worst['method']}) = "
                f"{worst['metrics'][metric]:.4f}"
            )
        if dense is not None and metric in dense.get("metrics", {}):
            text += f"; dense = {dense['metrics'][metric]:.4f}"
        lines.append(text + ".")
    by_tokens: dict[str, list[str]] = {}
    for record in pruned:
        digest = (record.get("calibration_fingerprint") or {}).get("token_sha256")
        if digest:
            by_tokens.setdefault(f"{record['method']}:{digest}", []).append(f"{record['calibration']} ({record['format']})")
    for key, names in by_tokens.items():
        if len(names) > 1:
            lines.append(
                f"{' and '.join(names)} calibrated on identical tokens (sha256 {key.split(':', 1)[1][:12]}), "
                "so their rows measure the same pruned model."
            )
    failed = [r for r in records if r.get("status") != "ok"]
    for record in failed:
        lines.append(f"{record['run_id']} failed: {record.get('error', 'unknown error')}")
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines) + "\n"


def plot_metric(records: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """One marker per run: calibration sources (per method) along x, one colour per format; dense as a line.

    Markers rather than bars, so the y axis can zoom onto the spread without truncated bars.
    """
    # A bare Figure renders with the Agg canvas and touches no pyplot state or global backend.
    from matplotlib.figure import Figure

    pruned = [r for r in records if r.get("method") != "dense" and r.get("status") == "ok" and metric in r.get("metrics", {})]
    methods = list(dict.fromkeys(r["method"] for r in pruned))
    groups = list(dict.fromkeys((r["method"], r["calibration"]) for r in pruned))
    formats = list(dict.fromkeys(r["format"] for r in pruned))
    figure = Figure(figsize=(max(4.5, 1.0 * len(groups) + 2.5), 3.6))
    axes = figure.add_subplot(1, 1, 1)
    step = 0.6 / max(1, len(formats))
    markers = "osD^vP*X"
    for f_index, fmt in enumerate(formats):
        xs, ys = [], []
        for g_index, (method, source) in enumerate(groups):
            match = next((r for r in pruned if r["method"] == method and r["calibration"] == source and r["format"] == fmt), None)
            if match is not None:
                xs.append(g_index + (f_index - (len(formats) - 1) / 2) * step)
                ys.append(match["metrics"][metric])
        axes.plot(xs, ys, linestyle="none", marker=markers[f_index % len(markers)], markersize=8, label=fmt)
        for x, y in zip(xs, ys):
            axes.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    dense = next((r for r in records if r.get("method") == "dense" and metric in r.get("metrics", {})), None)
    if dense is not None:
        axes.axhline(dense["metrics"][metric], color="black", linestyle="--", linewidth=1, label="dense")
    labels = [source if len(methods) == 1 else f"{method}\n{source}" for method, source in groups]
    axes.set_xticks(range(len(groups)), labels)
    axes.set_xlim(-0.6, len(groups) - 0.4)
    axes.margins(y=0.15)
    axes.set_xlabel("calibration source")
    kind = metric.rsplit("/", 1)[-1]
    axes.set_ylabel(METRIC_LABELS.get(kind, kind))
    title = metric.rsplit("/", 1)[0]
    if pruned:
        sparsity, pattern = pruned[0].get("sparsity"), pruned[0].get("pattern")
        title += f" after {', '.join(methods)} at {sparsity:g} ({pattern})"
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(title="format", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    _atomic_write_bytes(path, buffer.getvalue())
    return path


def write_outputs(records: Sequence[dict[str, Any]], output_dir: str | os.PathLike, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md``, ``<metric>.png`` and ``summary.txt`` into ``output_dir``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    columns, rows = results_rows(records)
    files: dict[str, Path] = {}

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    files["csv"] = output / "results.csv"
    _atomic_write_bytes(files["csv"], buffer.getvalue().encode("utf-8"))

    summary = summarize(records, notes)
    markdown = markdown_table(columns, rows) + "\n\n" + "\n".join(f"- {line}" for line in summary.strip().splitlines()) + "\n"
    files["markdown"] = output / "results.md"
    _atomic_write_bytes(files["markdown"], markdown.encode("utf-8"))
    files["summary"] = output / "summary.txt"
    _atomic_write_bytes(files["summary"], summary.encode("utf-8"))

    for metric in _metric_names(records):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)
        files[f"plot:{metric}"] = plot_metric(records, metric, output / f"{name}.png")
    return files
