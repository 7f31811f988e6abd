"""The study's bootstrap: coverage at the stated rate, identical cells never distinguishable, verdict direction."""

from __future__ import annotations

import numpy as np
import pytest

from hf_calibprune.study.statistics import binomial_interval, bootstrap_mean, compare_paired, seed_spread


def test_bootstrap_interval_covers_the_true_mean_at_the_stated_rate():
    # 400 samples of 60 draws from a skewed distribution with known mean 1.0 (exponential).
    rng = np.random.default_rng(123)
    trials, covered = 400, 0
    for trial in range(trials):
        sample = rng.exponential(1.0, size=60)
        interval = bootstrap_mean(sample, replicates=1000, seed=trial)
        covered += interval.low <= 1.0 <= interval.high
    rate = covered / trials
    # Nominal 95 %; the percentile bootstrap undercovers slightly at n=60 on skewed data.
    assert 0.90 <= rate <= 0.985, rate


def test_bootstrap_over_seeds_widens_when_seeds_disagree():
    rng = np.random.default_rng(0)
    units = rng.normal(0.0, 1.0, size=200)
    agreeing = np.stack([units, units, units])
    disagreeing = np.stack([units - 1.0, units, units + 1.0])
    narrow = bootstrap_mean(agreeing)
    wide = bootstrap_mean(disagreeing)
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert (wide.high - wide.low) > 3 * (narrow.high - narrow.low)


def test_identical_cells_are_never_distinguishable():
    rng = np.random.default_rng(1)
    for trial in range(50):
        cell = rng.normal(3.0, 1.0, size=(3, 40))
        for lower in (True, False):
            comparison = compare_paired(cell, cell.copy(), lower_is_better=lower, seed=trial)
            assert comparison.verdict == "not distinguishable"
            assert comparison.difference.low == comparison.difference.high == 0.0


def test_paired_verdict_direction_for_a_clear_shift():
    rng = np.random.default_rng(2)
    base = rng.normal(4.0, 1.0, size=(3, 100))
    shifted = base - 0.5  # lower NLL everywhere
    assert compare_paired(shifted, base, lower_is_better=True).verdict == "better"
    assert compare_paired(shifted, base, lower_is_better=False).verdict == "worse"
    assert compare_paired(base, shifted, lower_is_better=True).verdict == "worse"


def test_pairing_detects_a_small_shift_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(3)
    windows = rng.normal(4.0, 1.0, size=100)  # window difficulty varies a lot
    base = np.stack([windows + rng.normal(0, 0.01, 100) for _ in range(3)])
    cell = np.stack([windows - 0.05 + rng.normal(0, 0.01, 100) for _ in range(3)])
    assert compare_paired(cell, base, lower_is_better=True).verdict == "better"
    with pytest.raises(ValueError, match="same evaluation units"):
        compare_paired(cell[:, :50], base, lower_is_better=True)


def test_seed_spread_and_binomial_interval():
    assert seed_spread([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert seed_spread([5.0]) == (5.0, 0.0)
    interval = binomial_interval(50, 100)
    assert interval.low == pytest.approx(0.4038, abs=1e-3) and interval.high == pytest.approx(0.5962, abs=1e-3)
    assert not interval.excludes(0.5)
    assert binomial_interval(80, 100).excludes(0.5)
