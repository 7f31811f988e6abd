import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_calibprune.errors import ConfigError
from hf_calibprune.sparsity import SparsityPattern, parse_pattern, prune_mask_from_scores


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
