"""A study's outputs: ``results.csv`` (one row per run and seed), ``results.md`` (cells with mean ± sd and 95 %
intervals, comparisons with the baseline, chance levels), one PNG per metric, ``matrix.csv`` / ``matrix.png``
(calibration source × evaluation domain), ``languages.csv`` / ``languages.png`` (calibration language ×
evaluation language) and ``summary.txt``."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .analysis import (
    Cell,
    chance_levels,
    compare_cells,
    group_cells,
    lower_is_better,
    metric_names,
    relative_change,
    summarize_metric,
)

__all__ = [
    "METRIC_LABELS",
    "write_outputs",
    "results_rows",
    "markdown_table",
    "comparison_text",
    "summarize",
    "plot_metric",
    "domain_matrix",
    "language_matrix",
]

_BASE_COLUMNS = (
    "run_id",
    "kind",
    "method",
    "sparsity",
    "pattern",
    "calibration",
    "format",
    "requested_format",
    "seed",
    "calibration_sha256",
    "overall_sparsity",
    "parameters",
)
_TAIL_COLUMNS = ("prune_seconds", "eval_seconds", "status")

METRIC_LABELS = {"ppl": "perplexity (lower is better)", "acc": "accuracy (higher is better)", "acc_norm": "normalized accuracy (higher is better)"}

ZERO_SHOT_AVERAGE = "zero-shot average/acc"


def results_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows (one per run and seed, the dense baseline first) for ``results.csv``."""
    metrics = metric_names(records)
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


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table of ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def _csv_bytes(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    return buffer.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------------------------------
# Cells, comparisons, chance
# ---------------------------------------------------------------------------------------------------
def _grid_metrics(cells: Sequence[Cell], kind: str) -> list[str]:
    names: list[str] = []
    for cell in cells:
        if cell.kind == kind:
            for name in metric_names(cell.records):
                if name not in names:
                    names.append(name)
    return names


def _with_zero_shot_average(cells: list[Cell], chance: dict[str, dict[str, Any]]) -> list[str]:
    """Add a per-run average over the lm-eval tasks that are above chance; returns the tasks averaged."""
    tasks = sorted({name.rsplit("/", 1)[0] for cell in cells for name in metric_names(cell.records) if name.startswith("lm-eval:") and name.endswith("/acc")})
    kept = [task for task in tasks if task in chance and not chance[task]["at_chance"]]
    if not kept:
        return []
    for cell in cells:
        for record in cell.records:
            results = record.get("results", {})
            if all(task in results and results[task].get("scores") for task in kept):
                scores = [score for task in kept for score in results[task]["scores"]]
                record.setdefault("metrics", {})[ZERO_SHOT_AVERAGE] = sum(scores) / len(scores)
                results["zero-shot average"] = {"scores": scores}
    return kept


def _baseline_cell(cells: Sequence[Cell], cell: Cell, baseline: str | None) -> Cell | None:
    if baseline is None:
        return None
    return next((c for c in cells if c.kind == cell.kind == "pruned" and c.method == cell.method and c.calibration == baseline), None)


def _summary_text(cell: Cell, metric: str) -> str:
    summary = summarize_metric(cell, metric)
    if summary is None:
        return ""
    text = _number(summary.mean)
    if summary.seeds > 1:
        text += f" ± {_number(summary.sd)}"
    if summary.interval is not None:
        text += f" [{_number(summary.interval.low)}, {_number(summary.interval.high)}]"
    return text


def comparison_text(cell: Cell, baseline: Cell, metric: str) -> tuple[str, str]:
    """``cell`` against ``baseline`` on ``metric`` as ``("+1.2 % [-0.5, +2.9]", verdict)``; empty strings when the
    two cannot be paired."""
    comparison = compare_cells(cell, baseline, metric)
    if comparison is None:
        return "", ""
    interval = comparison.difference
    if lower_is_better(metric):
        text = f"{relative_change(interval.estimate):+.1f} % [{relative_change(interval.low):+.1f}, {relative_change(interval.high):+.1f}]"
    else:
        text = f"{100 * interval.estimate:+.1f} pt [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return text, comparison.verdict


def _cells_section(cells: list[Cell], metrics: list[str], chance: dict[str, dict[str, Any]], baseline: str | None) -> list[str]:
    columns = ["cell", "method", "seeds", *[_metric_header(m, chance) for m in metrics]]
    rows = []
    for cell in cells:
        if cell.kind == "language":
            continue
        row = {"cell": cell.label, "method": cell.method, "seeds": len(cell.records)}
        for metric in metrics:
            row[_metric_header(metric, chance)] = _summary_text(cell, metric)
        rows.append(row)
    lines = [
        "## Cells",
        "",
        "Mean ± standard deviation over calibration seeds, then the 95 % bootstrap interval over seeds and "
        "evaluation windows or examples (perplexity: exp of the interval of the mean NLL).",
        "",
        markdown_table(columns, rows),
        "",
    ]
    comparisons = []
    for cell in cells:
        base = _baseline_cell(cells, cell, baseline)
        if base is None or base is cell:
            continue
        row = {"cell": cell.label, "method": cell.method}
        for metric in metrics:
            text, verdict = comparison_text(cell, base, metric)
            row[metric] = f"{text} {verdict}".strip()
        comparisons.append(row)
    if comparisons:
        lines += [
            f"## Against the baseline ({baseline})",
            "",
            "Paired bootstrap over the same evaluation windows or examples (and seed indices): perplexity change in "
            "percent, accuracy change in points, 95 % interval, and the verdict: better or worse only when the "
            "interval excludes 0.",
            "",
            markdown_table(["cell", "method", *metrics], comparisons),
            "",
        ]
    return lines


def _metric_header(metric: str, chance: dict[str, dict[str, Any]]) -> str:
    task = metric.rsplit("/", 1)[0]
    return f"{metric} (at chance)" if chance.get(task, {}).get("at_chance") else metric


def _chance_section(chance: dict[str, dict[str, Any]], averaged: list[str]) -> list[str]:
    if not chance:
        return []
    rows = [
        {
            "task": task,
            "dense accuracy": f"{info['accuracy']:.3f} [{info['low']:.3f}, {info['high']:.3f}]",
            "n": info["n"],
            "chance": f"{info['chance']:.3f}",
            "above chance": "no (flagged, left out of averages)" if info["at_chance"] else "yes",
        }
        for task, info in chance.items()
    ]
    lines = [
        "## Can the dense model answer?",
        "",
        "Dense accuracy with its 95 % Wilson interval against chance (1 / choices for multiple-choice tasks, 0 for "
        "generated answers). A task whose interval reaches chance is flagged in the tables and left out of the "
        "zero-shot average.",
        "",
        markdown_table(["task", "dense accuracy", "n", "chance", "above chance"], rows),
        "",
    ]
    if averaged:
        lines += [f"`{ZERO_SHOT_AVERAGE}` averages the examples of: {', '.join(averaged)}.", ""]
    return lines


def summarize(records: Sequence[dict[str, Any]], notes: Sequence[str] = (), baseline: str | None = None) -> str:
    """Short lines: per metric the lowest/highest mean and its verdict against the baseline; identical
    calibration tokens; failures; notes."""
    cells = group_cells(records)
    dense = next((c for c in cells if c.kind == "dense"), None)
    lines = []
    for metric in _grid_metrics(cells, "pruned"):
        candidates = [(c, summarize_metric(c, metric)) for c in cells if c.kind == "pruned"]
        candidates = [(c, s) for c, s in candidates if s is not None]
        if not candidates:
            continue
        lower = lower_is_better(metric)
        best_cell, best = (min if lower else max)(candidates, key=lambda item: item[1].mean)
        if len({round(summary.mean, 12) for _, summary in candidates}) == 1:
            lines.append(f"{metric}: all {len(candidates)} pruned cells tie at {best.mean:.4f}.")
            continue
        text = f"{metric}: {'lowest' if lower else 'highest'} mean {best_cell.label}, {best_cell.method} = {best.mean:.4f}"
        if best.seeds > 1:
            text += f" ± {best.sd:.4f} over {best.seeds} seeds"
        base = _baseline_cell(cells, best_cell, baseline)
        if base is not None and base is not best_cell:
            comparison, verdict = comparison_text(best_cell, base, metric)
            if verdict:
                text += f"; against {baseline}: {comparison}, {verdict}"
        if dense is not None:
            dense_summary = summarize_metric(dense, metric)
            if dense_summary is not None:
                text += f"; dense = {dense_summary.mean:.4f}"
        lines.append(text + ".")
    by_tokens: dict[str, list[str]] = {}
    for record in records:
        if record.get("method") == "dense" or record.get("status") != "ok":
            continue
        digest = (record.get("calibration_fingerprint") or {}).get("token_sha256")
        if digest:
            by_tokens.setdefault(f"{record['method']}:{digest}", []).append(f"{record['calibration']} ({record['format']})")
    for key, names in by_tokens.items():
        if len(names) > 1:
            lines.append(
                f"{' and '.join(names)} calibrated on identical tokens (sha256 {key.split(':', 1)[1][:12]}), "
                "so their rows measure the same pruned model."
            )
    for record in records:
        if record.get("status") != "ok":
            lines.append(f"{record['run_id']} failed: {record.get('error', 'unknown error')}")
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------------------------------
def _domain_name(metric: str) -> str:
    task = metric.rsplit("/", 1)[0]
    return task[4:] if task.lower().startswith("ppl:") else task


def domain_matrix(cells: Sequence[Cell], baseline: str | None) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Calibration source × evaluation domain: mean perplexity over seeds, and the change against the baseline.

    Returns ``(columns, rows, domains)``; each row has ``<domain>`` (mean perplexity), ``<domain> change %``
    (against the baseline source of the same method, paired) and ``<domain> verdict``.
    """
    metrics = [m for m in _grid_metrics(cells, "pruned") if m.endswith("/ppl")]
    domains = [_domain_name(m) for m in metrics]
    columns = ["method", "calibration", "format", "seeds"]
    for domain in domains:
        columns += [domain, f"{domain} change %", f"{domain} verdict"]
    rows = []
    for cell in cells:
        if cell.kind not in ("pruned", "dense"):
            continue
        row: dict[str, Any] = {"method": cell.method, "calibration": cell.calibration, "format": cell.format, "seeds": len(cell.records)}
        base = _baseline_cell(cells, cell, baseline)
        for metric, domain in zip(metrics, domains):
            summary = summarize_metric(cell, metric)
            row[domain] = round(summary.mean, 4) if summary is not None else ""
            if base is not None:
                comparison = compare_cells(cell, base, metric)
                if comparison is not None:
                    row[f"{domain} change %"] = round(relative_change(comparison.difference.estimate), 3)
                    row[f"{domain} verdict"] = "baseline" if base is cell else comparison.verdict
        rows.append(row)
    return columns, rows, domains


def language_matrix(cells: Sequence[Cell]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Calibration language × evaluation language: mean PUD perplexity over seeds (plus the dense row)."""
    language_cells = [c for c in cells if c.kind == "language"]
    metrics = [m for m in _grid_metrics(cells, "language") if m.endswith("/ppl")]
    languages = [_domain_name(m).split("@", 1)[-1] for m in metrics]
    columns = ["method", "calibration", "calibration_language", "seeds", *languages]
    rows = []
    dense = next((c for c in cells if c.kind == "dense"), None)
    for cell in ([dense] if dense is not None else []) + language_cells:
        row: dict[str, Any] = {
            "method": cell.method,
            "calibration": cell.calibration,
            "calibration_language": "-" if cell.kind == "dense" else cell.calibration.split("@", 1)[-1],
            "seeds": len(cell.records),
        }
        for metric, language in zip(metrics, languages):
            summary = summarize_metric(cell, metric)
            row[language] = round(summary.mean, 4) if summary is not None else ""
        rows.append(row)
    return columns, rows, languages


def _language_comparisons(cells: Sequence[Cell]) -> list[str]:
    """For each evaluation language: its own-language calibration against every other calibration language."""
    language_cells = [c for c in cells if c.kind == "language"]
    metrics = [m for m in _grid_metrics(cells, "language") if m.endswith("/ppl")]
    rows = []
    for metric in metrics:
        language = _domain_name(metric).split("@", 1)[-1]
        for own in (c for c in language_cells if c.calibration.split("@", 1)[-1] == language):
            for other in language_cells:
                if other is own or other.method != own.method:
                    continue
                text, verdict = comparison_text(own, other, metric)
                if verdict:
                    rows.append({"evaluated on": language, "method": own.method, "own-language calibration vs": other.calibration, "change": text, "verdict": verdict})
    if not rows:
        return []
    return [
        "## Calibration language (PUD perplexity)",
        "",
        "Each row: the model calibrated in the evaluation language against the one calibrated in another language, "
        "paired over the same PUD windows; negative change means the own-language calibration has lower perplexity.",
        "",
        markdown_table(["evaluated on", "method", "own-language calibration vs", "change", "verdict"], rows),
        "",
    ]


def _heatmap(
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    values: Sequence[Sequence[float | None]],
    title: str,
    colorbar: str,
    path: Path,
    marks: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """Annotated diverging heatmap centred on 0, its colours clipped at the 90th percentile of |value|; ``marks`` adds
    ``*`` (a paired difference whose interval excludes 0)."""
    import numpy as np
    from matplotlib.figure import Figure

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    figure = Figure(figsize=(max(4.5, 1.1 * len(column_labels) + 3), max(2.8, 0.45 * len(row_labels) + 1.8)))
    axes = figure.add_subplot(1, 1, 1)
    finite = np.abs(data[np.isfinite(data)])
    # The colour range is the 90th percentile of |change|: one degenerate row (ellipses, +2000 %) would otherwise
    # bleach every other cell; cells beyond it take the end colour and keep their number.
    bound = float(np.percentile(finite, 90)) if finite.size else 1.0
    image = axes.imshow(data, cmap="RdBu_r", vmin=-bound or -1, vmax=bound or 1, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                mark = "*" if marks is not None and marks[i][j] else ""
                colour = "white" if abs(data[i, j]) > 0.6 * bound else "black"  # readable on the dark ends
                axes.text(j, i, f"{data[i, j]:+.1f}{mark}", ha="center", va="center", fontsize=8, color=colour)
    axes.set_xticks(range(len(column_labels)), column_labels, rotation=30, ha="right")
    axes.set_yticks(range(len(row_labels)), row_labels)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label=colorbar)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    _atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_metric(records: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """Per cell: each seed as a small dot, the mean as a marker with its 95 % interval; dense as a line."""
    # A bare Figure renders with the Agg canvas and touches no pyplot state or global backend.
    from matplotlib.figure import Figure

    cells = [c for c in group_cells(records) if c.kind != "dense" and c.values(metric)]
    groups = list(dict.fromkeys((c.method, c.calibration) for c in cells))
    methods = list(dict.fromkeys(c.method for c in cells))
    formats = list(dict.fromkeys(c.format for c in cells))
    figure = Figure(figsize=(max(4.5, 1.0 * len(groups) + 2.5), 3.6))
    axes = figure.add_subplot(1, 1, 1)
    step = 0.6 / max(1, len(formats))
    markers = "osD^vP*X"
    for f_index, fmt in enumerate(formats):
        xs, ys, lows, highs = [], [], [], []
        for g_index, (method, source) in enumerate(groups):
            cell = next((c for c in cells if (c.method, c.calibration, c.format) == (method, source, fmt)), None)
            if cell is None:
                continue
            x = g_index + (f_index - (len(formats) - 1) / 2) * step
            summary = summarize_metric(cell, metric)
            if summary is None:
                continue
            values = cell.values(metric)
            axes.plot([x] * len(values), values, linestyle="none", marker=".", color="grey", markersize=4)
            xs.append(x)
            ys.append(summary.mean)
            interval = summary.interval
            lows.append(summary.mean - interval.low if interval else 0.0)
            highs.append(interval.high - summary.mean if interval else 0.0)
        axes.errorbar(xs, ys, yerr=[lows, highs], linestyle="none", marker=markers[f_index % len(markers)], markersize=7, capsize=3, label=fmt)
        for x, y in zip(xs, ys):
            axes.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(6, 0), ha="left", fontsize=7)
    dense = next((c for c in group_cells(records) if c.kind == "dense" and c.values(metric)), None)
    if dense is not None:
        axes.axhline(dense.values(metric)[0], color="black", linestyle="--", linewidth=1, label="dense")
    labels = [source if len(methods) == 1 else f"{method}\n{source}" for method, source in groups]
    axes.set_xticks(range(len(groups)), labels, rotation=20 if len(groups) > 6 else 0)
    axes.set_xlim(-0.6, len(groups) - 0.4)
    axes.margins(y=0.15)
    axes.set_xlabel("calibration source")
    kind = metric.rsplit("/", 1)[-1]
    axes.set_ylabel(METRIC_LABELS.get(kind, kind))
    title = metric.rsplit("/", 1)[0]
    if cells:
        record = cells[0].records[0]
        title += f": {', '.join(methods)} {record.get('sparsity', '')} {record.get('pattern', '')}"
    axes.set_title(title + "\nmean over seeds (dots) and 95 % interval", fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(title="format", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    _atomic_write_bytes(path, buffer.getvalue())
    return path


def write_outputs(
    records: Sequence[dict[str, Any]], output_dir: str | os.PathLike, notes: Sequence[str] = (), baseline: str | None = None
) -> dict[str, Path]:
    """Write the study's tables, matrices and plots into ``output_dir``.

    Args:
        records (`Sequence[dict]`): the run records (dense first, one per cell and seed).
        output_dir (`str`): where to write.
        notes (`Sequence[str]`, *optional*): notes of the plan (formats that fell back).
        baseline (`str`, *optional*): calibration source every other cell is compared with.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    records = [dict(record, metrics=dict(record.get("metrics", {})), results=dict(record.get("results", {}))) for record in records]
    cells = group_cells(records)
    dense = next((c for c in cells if c.kind == "dense"), None)
    chance = chance_levels(dense)
    averaged = _with_zero_shot_average(cells, chance)
    files: dict[str, Path] = {}

    columns, rows = results_rows(records)
    files["csv"] = output / "results.csv"
    _atomic_write_bytes(files["csv"], _csv_bytes(columns, rows))

    summary = summarize(records, notes, baseline)
    metrics = _grid_metrics(cells, "pruned") or metric_names(records)
    sections = _cells_section(cells, metrics, chance, baseline) + _chance_section(chance, averaged) + _language_comparisons(cells)
    markdown = "\n".join(sections) + "\n## Runs\n\n" + markdown_table(columns, rows) + "\n\n"
    markdown += "\n".join(f"- {line}" for line in summary.strip().splitlines()) + "\n"
    files["markdown"] = output / "results.md"
    _atomic_write_bytes(files["markdown"], markdown.encode("utf-8"))
    files["summary"] = output / "summary.txt"
    _atomic_write_bytes(files["summary"], summary.encode("utf-8"))

    matrix_columns, matrix_rows, domains = domain_matrix(cells, baseline)
    if domains:
        files["matrix"] = output / "matrix.csv"
        _atomic_write_bytes(files["matrix"], _csv_bytes(matrix_columns, matrix_rows))
        pruned_rows = [row for row in matrix_rows if row["method"] != "dense"]
        if pruned_rows and any(row.get(f"{d} change %", "") != "" for row in pruned_rows for d in domains):
            files["matrix_plot"] = _heatmap(
                [f"{row['calibration']} ({row['format']})" + ("" if len({r['method'] for r in pruned_rows}) == 1 else f" {row['method']}") for row in pruned_rows],
                domains,
                [[row.get(f"{d} change %") if row.get(f"{d} change %", "") != "" else None for d in domains] for row in pruned_rows],
                f"Perplexity change vs calibration on {baseline} (%), by evaluation domain\n"
                "* = paired 95 % interval excludes 0",
                "perplexity change (%)",
                output / "matrix.png",
                marks=[[row.get(f"{d} verdict") in ("better", "worse") for d in domains] for row in pruned_rows],
            )

    language_columns, language_rows, languages = language_matrix(cells)
    if languages and any(row["calibration_language"] != "-" for row in language_rows):
        files["languages"] = output / "languages.csv"
        _atomic_write_bytes(files["languages"], _csv_bytes(language_columns, language_rows))
        pruned = [row for row in language_rows if row["calibration_language"] != "-"]
        reference = pruned[0]
        values = [
            [
                (float(row[lang]) / float(reference[lang]) - 1.0) * 100.0 if row[lang] != "" and reference[lang] not in ("", 0) else None
                for lang in languages
            ]
            for row in pruned
        ]
        files["languages_plot"] = _heatmap(
            [f"calibrated: {row['calibration']}" for row in pruned],
            languages,
            values,
            f"PUD perplexity change vs calibration on {reference['calibration']} (%), by evaluation language",
            "perplexity change (%)",
            output / "languages.png",
        )

    for metric in metric_names(records):
        if not any(c.kind == "pruned" and c.values(metric) for c in cells):
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)
        files[f"plot:{metric}"] = plot_metric(records, metric, output / f"{name}.png")
    return files
