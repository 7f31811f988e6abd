import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_calibprune.errors import ConfigError
from hf_calibprune.sparsity import SparsityPattern, lowest_mask, parse_pattern, prune_mask_from_scores


@pytest.mark.parametrize("text, n, m", [("2:4", 2, 4), ("4:8", 4, 8), (" 1 : 4 ", 1, 4)])
def test_parse_n_m(text, n, m):
    assert parse_pattern(text) == SparsityPattern(n, m)


@pytest.mark.parametrize("text, fragment", [("4:2", "0 < N < M"), ("2:2", "0 < N < M"), ("banana", "not understood")])
def test_parse_rejects(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_pattern(text)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 6),
    m=st.sampled_from([4, 8]),
    sparsity=st.floats(0, 0.95),
    seed=st.integers(0, 1000),
)
def test_masks_are_exact(rows, groups, m, sparsity, seed):
    cols = groups * m
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    row_mask = prune_mask_from_scores(scores, sparsity, SparsityPattern(), scope="row")
    assert (row_mask.sum(dim=1) == int(cols * sparsity)).all()
    layer_mask = prune_mask_from_scores(scores, sparsity, SparsityPattern(), scope="layer")
    assert int(layer_mask.sum()) == int(rows * cols * sparsity)
    n = m // 2
    group_mask = prune_mask_from_scores(scores, sparsity, SparsityPattern(n, m))
    assert (group_mask.reshape(rows, groups, m).sum(dim=-1) == m - n).all()


def test_mask_prunes_lowest_scores():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 9.0, 8.0, 7.0]])
    mask = prune_mask_from_scores(scores, 0.5, SparsityPattern(2, 4))
    assert mask.tolist() == [[False, True, False, True, True, False, False, True]]


def test_n_m_needs_divisible_width():
    with pytest.raises(ConfigError, match="divisible by 4"):
        prune_mask_from_scores(torch.rand(2, 6), 0.5, SparsityPattern(2, 4))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), fraction=st.floats(0, 1), levels=st.sampled_from([None, 2, 5]), seed=st.integers(0, 1000))
def test_lowest_mask_is_exact_and_picks_lowest(rows, cols, fraction, levels, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, cols, generator=generator)
    if levels is not None:  # few distinct values, like dequantized weights: many ties at the threshold
        scores = (scores * levels).floor()
    count = int(cols * fraction)
    for dim, view in ((-1, scores), (0, scores.t())):
        mask = lowest_mask(view, count, dim=dim)
        per_slice = mask.sum(dim=dim)
        assert (per_slice == count).all()
        kept_min = view.masked_fill(mask, float("inf")).amin(dim=dim)
        pruned_max = view.masked_fill(~mask, float("-inf")).amax(dim=dim)
        assert (pruned_max <= kept_min).all()


def test_lowest_mask_matches_topk_on_distinct_scores():
    scores = torch.randn(7, 300, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(120, dim=1, largest=False).indices, True)
    assert torch.equal(lowest_mask(scores, 120), expected)
