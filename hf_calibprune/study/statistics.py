"""Intervals and comparisons for a study's cells: seeds × evaluation units, bootstrapped.

A cell's numbers are a matrix ``[seeds, units]``: one row per calibration seed, one column per evaluation
window (perplexity: the window's mean negative log-likelihood) or example (accuracy: 0 or 1). Two sources
of chance move a cell's number: which calibration samples were drawn (the seed) and which evaluation text
was scored (the units). The bootstrap here resamples both: each replicate draws seeds with replacement and
units with replacement, and takes the mean. Comparing a cell with a baseline draws the *same* units (and
seed indices) for both: a paired bootstrap over the same windows or examples.

With one seed only the units are resampled, so the interval says nothing about calibration-seed spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Interval", "Comparison", "bootstrap_mean", "compare_paired", "seed_spread", "binomial_interval"]

#: Bootstrap replicates used by the study.
DEFAULT_REPLICATES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval.

    Args:
        estimate (`float`): the statistic on the data as observed.
        low (`float`), high (`float`): the interval's ends.
        confidence (`float`): its nominal coverage (0.95 for a 95 % interval).
    """

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies strictly outside the interval."""
        return value < self.low or value > self.high


@dataclass(frozen=True)
class Comparison:
    """A cell against the baseline: the difference of means (cell − baseline) and the verdict.

    Args:
        difference (`Interval`): mean per-unit difference (NLL for perplexity, accuracy for accuracy).
        verdict (`str`): ``"better"``, ``"worse"`` or ``"not distinguishable"`` (the interval holds 0).
        units (`int`): paired windows or examples.
    """

    difference: Interval
    verdict: str
    units: int


def _as_matrix(values: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"Expected a non-empty [seeds, units] matrix, got shape {matrix.shape}.")
    return matrix


def _replicate_means(matrix: np.ndarray, unit_draws: np.ndarray, seed_draws: np.ndarray) -> np.ndarray:
    """Mean of each replicate: the drawn seeds (rows) of the row means over the drawn units."""
    # [replicates, seeds]: each seed's mean over the units drawn for that replicate.
    row_means = np.stack([matrix[s][unit_draws].mean(axis=1) for s in range(matrix.shape[0])], axis=1)
    return np.take_along_axis(row_means, seed_draws, axis=1).mean(axis=1)


def _draws(rng: np.random.Generator, replicates: int, units: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
    unit_draws = rng.integers(0, units, size=(replicates, units))
    seed_draws = rng.integers(0, seeds, size=(replicates, seeds)) if seeds > 1 else np.zeros((replicates, 1), dtype=np.int64)
    return unit_draws, seed_draws


def _percentile_interval(estimate: float, replicates: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), confidence)


def bootstrap_mean(
    values: Sequence[Sequence[float]] | np.ndarray,
    *,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval of the mean of a ``[seeds, units]`` matrix (or a 1-D sample).

    Args:
        values: per-seed, per-unit values; a 1-D array is one seed.
        replicates (`int`, *optional*, defaults to 2000): bootstrap replicates.
        confidence (`float`, *optional*, defaults to 0.95): nominal coverage.
        seed (`int`, *optional*, defaults to 0): seed of the resampling.
    """
    matrix = _as_matrix(values)
    unit_draws, seed_draws = _draws(np.random.default_rng(seed), replicates, matrix.shape[1], matrix.shape[0])
    return _percentile_interval(matrix.mean(), _replicate_means(matrix, unit_draws, seed_draws), confidence)


def compare_paired(
    cell: Sequence[Sequence[float]] | np.ndarray,
    baseline: Sequence[Sequence[float]] | np.ndarray,
    *,
    lower_is_better: bool,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap of ``mean(cell) − mean(baseline)`` over the same units.

    Every replicate draws one set of unit indices and one set of seed indices, used for both cells: the
    same evaluation units, and seed *i* of one cell against seed *i* of the other (the same sampling seed;
    cells with different seed counts draw their seeds independently). The cell is ``better`` or ``worse``
    only when the interval excludes 0; two identical cells differ by exactly 0 in every replicate.

    Args:
        cell, baseline: ``[seeds, units]`` matrices over the same units in the same order.
        lower_is_better (`bool`): `True` for NLL / perplexity, `False` for accuracy.
    """
    a, b = _as_matrix(cell), _as_matrix(baseline)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"A paired comparison needs the same evaluation units: the cell has {a.shape[1]}, the baseline {b.shape[1]}."
        )
    rng = np.random.default_rng(seed)
    units = a.shape[1]
    unit_draws, seed_draws = _draws(rng, replicates, units, a.shape[0])
    other_seeds = seed_draws if b.shape[0] == a.shape[0] else _draws(rng, replicates, units, b.shape[0])[1]
    differences = _replicate_means(a, unit_draws, seed_draws) - _replicate_means(b, unit_draws, other_seeds)
    interval = _percentile_interval(a.mean() - b.mean(), differences, confidence)
    if not interval.excludes(0.0):
        verdict = "not distinguishable"
    elif (interval.high < 0) == lower_is_better:
        verdict = "better"
    else:
        verdict = "worse"
    return Comparison(interval, verdict, units)


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of per-seed results."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def binomial_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (used to test an accuracy against chance)."""
    if n <= 0:
        raise ValueError("A proportion needs n >= 1.")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, float(max(0.0, centre - half)), float(min(1.0, centre + half)), confidence)
