"""RIA: its score against a direct computation, on inputs where Wanda ranks differently."""

import pytest
import torch

from hf_calibprune import PruningConfig
from hf_calibprune.errors import ConfigError
from hf_calibprune.methods import METHODS, build_method
from hf_calibprune.methods.ria import ria_scores
from hf_calibprune.methods.wanda import wanda_scores
from hf_calibprune.sparsity import InputStatistics, parse_pattern


def stats_of(x):
    stats = InputStatistics(x.shape[1], hessian=False)
    stats.add(x)
    return stats


def direct_ria(weight, x, a):
    """The paper's formula written out element by element."""
    rows, columns = weight.shape
    norms = [sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) ** 0.5 for j in range(columns)]
    row_sums = [sum(abs(float(weight[i, k])) for k in range(columns)) for i in range(rows)]
    column_sums = [sum(abs(float(weight[k, j])) for k in range(rows)) for j in range(columns)]
    return torch.tensor(
        [
            [
                (abs(float(weight[i, j])) / row_sums[i] + abs(float(weight[i, j])) / column_sums[j]) * norms[j] ** a
                for j in range(columns)
            ]
            for i in range(rows)
        ]
    )


# Row 0 has similar magnitudes everywhere, but columns 1 and 3 also hold the large weights of row 1, so their
# weights in row 0 matter little relative to their column: RIA prunes row 0's columns 1 and 3, Wanda (|W|·‖x‖)
# prunes its columns 0 and 2, the smallest products.
WEIGHT = torch.tensor([[1.0, 1.2, 1.1, 1.3], [0.1, 10.0, 0.2, 9.0], [2.0, 0.5, 3.0, 0.4]])
INPUTS = torch.tensor([[1.0, 1.0, 0.9, 1.1], [0.5, 0.6, 0.7, 0.4]])


@pytest.mark.parametrize("a", [0.5, 1.0, 0.0])
def test_ria_scores_match_direct_computation(a):
    stats = stats_of(INPUTS)
    torch.testing.assert_close(ria_scores(WEIGHT, stats.norms, a), direct_ria(WEIGHT, INPUTS, a), rtol=1e-5, atol=1e-6)


def test_ria_mask_differs_from_wanda_and_follows_direct_scores():
    stats = stats_of(INPUTS)
    pattern = parse_pattern("unstructured")
    ria = build_method("ria").prune(WEIGHT, stats, 0.5, pattern)
    wanda = build_method("wanda").prune(WEIGHT, stats, 0.5, pattern)
    assert not torch.equal(ria.mask, wanda.mask), "inputs must make RIA and Wanda disagree"
    direct = direct_ria(WEIGHT, INPUTS, 0.5)
    expected = torch.zeros_like(ria.mask).scatter_(1, torch.topk(direct, 2, dim=1, largest=False).indices, True)
    assert torch.equal(ria.mask, expected)
    # Wanda prunes exactly by |W|·‖x‖, which is what separates the two.
    wanda_expected = torch.zeros_like(ria.mask).scatter_(
        1, torch.topk(wanda_scores(WEIGHT, stats.norms), 2, dim=1, largest=False).indices, True
    )
    assert torch.equal(wanda.mask, wanda_expected)


def test_ria_two_four_compares_within_groups():
    # Eight columns: two groups of four, where the lowest half of a row is not two of each group.
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 8, generator=generator) * torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    inputs = torch.rand(5, 8, generator=generator) + 0.2
    result = build_method("ria").prune(weight, stats_of(inputs), 0.5, parse_pattern("2:4"))
    direct = direct_ria(weight, inputs, 0.5)
    groups = direct.reshape(6, 2, 4)
    expected = torch.zeros_like(groups, dtype=torch.bool).scatter_(
        -1, torch.topk(groups, 2, dim=-1, largest=False).indices, True
    ).reshape(6, 8)
    per_row = torch.zeros_like(expected).scatter_(1, torch.topk(direct, 4, dim=1, largest=False).indices, True)
    assert not torch.equal(expected, per_row), "the test input must separate groups from rows"
    assert torch.equal(result.mask, expected)
    assert (result.mask.reshape(6, 2, 4).sum(dim=-1) == 2).all()


def test_exponent_changes_the_ranking():
    # Column 0 has the largest weights but a tiny activation: with a=0 (relative importance only) it is kept,
    # with a=1 it is pruned.
    weight = torch.tensor([[3.0, 1.0], [3.0, 1.0]])
    x = torch.tensor([[0.05, 1.0]])
    stats = stats_of(x)
    pattern = parse_pattern("unstructured")
    assert build_method("ria", {"a": 0.0}).prune(weight, stats, 0.5, pattern).mask[:, 1].all()
    assert build_method("ria", {"a": 1.0}).prune(weight, stats, 0.5, pattern).mask[:, 0].all()


def test_layer_scope_prunes_exact_total():
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    stats = stats_of(torch.randn(32, 16, generator=torch.Generator().manual_seed(1)))
    result = build_method("ria", {"scope": "layer"}).prune(weight, stats, 0.5, parse_pattern("unstructured"))
    assert int(result.mask.sum()) == 64
    assert torch.equal(result.weight == 0, result.mask)


def test_zero_rows_and_columns_give_finite_scores():
    weight = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    scores = ria_scores(weight, torch.ones(2), 0.5)
    assert torch.isfinite(scores).all()


def test_registered_and_configurable():
    assert "ria" in METHODS.names()
    assert METHODS.get("ria").needs == "norms"
    PruningConfig(method="ria", method_options={"a": 0.25})
    with pytest.raises(ConfigError, match="a=-1"):
        build_method("ria", {"a": -1})
    with pytest.raises(ConfigError, match="Did you mean 'scope'"):
        build_method("ria", {"scop": "row"})
