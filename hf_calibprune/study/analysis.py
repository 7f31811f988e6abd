"""From a study's run records to what they support: cells over seeds, intervals, comparisons, chance levels.

A *cell* is one calibration choice (method × source × format, or a calibration language) with one run per
seed. Its numbers per task are a ``[seeds, units]`` matrix of per-window NLLs (perplexity) or per-example
scores (accuracy); :mod:`.statistics` turns them into intervals and paired comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .statistics import Comparison, Interval, binomial_interval, bootstrap_mean, compare_paired, seed_spread

__all__ = [
    "Cell",
    "MetricSummary",
    "group_cells",
    "metric_names",
    "summarize_metric",
    "compare_cells",
    "chance_levels",
    "lower_is_better",
    "relative_change",
]


def lower_is_better(metric: str) -> bool:
    return metric.endswith("/ppl")


def metric_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """Headline metric names in first-seen order."""
    names: list[str] = []
    for record in records:
        for name in record.get("metrics", {}):
            if name not in names:
                names.append(name)
    return names


@dataclass
class Cell:
    """One calibration choice and its runs, one per seed (sorted by seed).

    Args:
        kind (`str`): ``"dense"``, ``"pruned"`` or ``"language"``.
        method (`str`), calibration (`str`), format (`str`): the choice.
        records (`list[dict]`): the finished runs.
    """

    kind: str
    method: str
    calibration: str
    format: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "dense" if self.kind == "dense" else f"{self.calibration} ({self.format})"

    @property
    def seeds(self) -> list[Any]:
        return [record.get("seed") for record in self.records]

    def units(self, metric: str) -> np.ndarray | None:
        """``[seeds, units]`` per-window NLLs or per-example scores of ``metric``'s task, if every seed has them."""
        task, _, kind = metric.rpartition("/")
        if kind == "acc_norm":
            return None
        rows = []
        for record in self.records:
            result = record.get("results", {}).get(task, {})
            values = result.get("window_nlls") if kind == "ppl" else result.get("scores")
            if not values:
                return None
            rows.append(values)
        if not rows or len({len(row) for row in rows}) != 1:
            return None
        return np.asarray(rows, dtype=np.float64)

    def values(self, metric: str) -> list[float]:
        """The metric of each seed's run."""
        return [float(record["metrics"][metric]) for record in self.records if metric in record.get("metrics", {})]


def group_cells(records: Sequence[dict[str, Any]]) -> list[Cell]:
    """Cells in first-seen order, the dense baseline first; only runs with ``status == "ok"``."""
    cells: dict[tuple[str, str, str, str], Cell] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        kind = "dense" if record.get("method") == "dense" else record.get("kind", "pruned")
        key = (kind, record["method"], record.get("calibration", "-"), record.get("format", "-"))
        cells.setdefault(key, Cell(*key)).records.append(record)
    for cell in cells.values():
        cell.records.sort(key=lambda record: (record.get("seed") is None, record.get("seed") or 0))
    return sorted(cells.values(), key=lambda cell: cell.kind != "dense")


@dataclass(frozen=True)
class MetricSummary:
    """A cell's metric over seeds.

    Args:
        mean (`float`), sd (`float`): mean and sample standard deviation of the per-seed values.
        seeds (`int`): runs summarized.
        interval (`Interval`, *optional*): 95 % bootstrap interval over seeds and evaluation units, in the
            metric's scale (perplexity: ``exp`` of the interval of the mean NLL).
    """

    mean: float
    sd: float
    seeds: int
    interval: Interval | None


def summarize_metric(cell: Cell, metric: str) -> MetricSummary | None:
    values = [value for value in cell.values(metric) if math.isfinite(value)]
    if not values:
        return None
    mean, sd = seed_spread(values)
    units = cell.units(metric)
    interval = None
    if units is not None and np.isfinite(units).all():
        raw = bootstrap_mean(units)
        if lower_is_better(metric):
            raw = Interval(math.exp(raw.estimate), math.exp(raw.low), math.exp(raw.high), raw.confidence)
        interval = raw
    return MetricSummary(mean, sd, len(values), interval)


def compare_cells(cell: Cell, baseline: Cell, metric: str) -> Comparison | None:
    """Paired bootstrap of ``cell`` against ``baseline`` on ``metric``; `None` without matching units.

    For perplexity the difference is in mean NLL; :func:`relative_change` turns it into a percentage.
    """
    a, b = cell.units(metric), baseline.units(metric)
    if a is None or b is None or a.shape[1] != b.shape[1] or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    return compare_paired(a, b, lower_is_better=lower_is_better(metric))


def relative_change(nll_difference: float) -> float:
    """Perplexity change in percent for a difference in mean NLL."""
    return (math.exp(nll_difference) - 1.0) * 100.0


def chance_levels(dense: Cell | None) -> dict[str, dict[str, Any]]:
    """For each accuracy task of the dense model: its chance level and whether the dense accuracy exceeds it.

    The chance level is ``1 / choices`` for lm-evaluation-harness tasks (multiple choice) and 0 for
    few-shot generation tasks (an answer must be written, so a model that cannot answer scores 0). A task
    is *at chance* when the 95 % Wilson interval of the dense accuracy reaches the chance level.
    """
    if dense is None or not dense.records:
        return {}
    record = dense.records[0]
    out: dict[str, dict[str, Any]] = {}
    for task, result in record.get("results", {}).items():
        scores = result.get("scores")
        if not scores or "window_nlls" in result:
            continue
        choices = result.get("choices")
        chance = 1.0 / choices if choices else 0.0
        interval = binomial_interval(int(round(sum(scores))), len(scores))
        out[task] = {
            "chance": chance,
            "accuracy": interval.estimate,
            "low": interval.low,
            "high": interval.high,
            "n": len(scores),
            "at_chance": interval.low <= chance,
        }
    return out
