"""Contract tests over every registered method, and method-specific properties."""

import pytest
import torch

from hf_calibprune.errors import ConfigError, NumericalError
from conftest import MASK_METHODS
from hf_calibprune.methods import MASK_PATTERNS, METHODS, build_method
from hf_calibprune.methods.sparsegpt import inverse_hessian_cholesky
from hf_calibprune.methods.wanda import wanda_scores
from hf_calibprune.sparsity import InputStatistics, parse_pattern, quadratic_trace
from hf_calibprune.structured import STRUCTURED_PATTERNS
from reference_pruning import fasterprune_reference

PATTERNS = [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", 0.5), ("4:8", 0.5), ("1:4", 0.75)]
# Methods declare the patterns they prune; the mask contract covers those that take mask patterns.
STRUCTURED_ONLY = [name for name in METHODS.names() if not set(MASK_PATTERNS) & set(METHODS.get(name).patterns)]


def correlated_inputs(tokens=256, features=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator)
    scale = torch.linspace(0.2, 3.0, features)
    return (torch.randn(tokens, features, generator=generator) @ mixing) * scale


def statistics(x, method):
    stats = InputStatistics(x.shape[1], hessian=METHODS.get(method).needs == "hessian")
    stats.add(x)
    return stats


def relative_error(weight, pruned, x):
    return float(((x @ (weight - pruned).t()) ** 2).sum() / ((x @ weight.t()) ** 2).sum())


@pytest.mark.parametrize("method", MASK_METHODS)
@pytest.mark.parametrize("pattern, sparsity", PATTERNS)
def test_contract_exact_sparsity(method, pattern, sparsity):
    x = correlated_inputs()
    weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(1))
    parsed = parse_pattern(pattern)
    result = build_method(method).prune(weight, statistics(x, method), sparsity, parsed)
    zeros = result.weight == 0
    assert torch.equal(zeros, result.mask)
    if not parsed.is_unstructured:
        assert (zeros.reshape(24, -1, parsed.m).sum(-1) == parsed.m - parsed.n).all()
    elif getattr(build_method(method).options, "scope", "row") == "layer":
        assert int(zeros.sum()) == int(weight.numel() * sparsity)
    else:
        assert (zeros.sum(dim=1) == int(32 * sparsity)).all()
    assert result.weight.dtype == torch.float32


@pytest.mark.parametrize("method", MASK_METHODS)
def test_zero_sparsity_is_identity(method):
    x = correlated_inputs()
    weight = torch.randn(16, 32)
    result = build_method(method).prune(weight, statistics(x, method), 0.0, parse_pattern("unstructured"))
    assert torch.equal(result.weight, weight)


def test_every_method_is_a_mask_method_or_declares_its_structures():
    for name in METHODS.names():
        patterns = set(METHODS.get(name).patterns)
        assert patterns and patterns <= {*MASK_PATTERNS, *STRUCTURED_PATTERNS}, name
        assert name in MASK_METHODS or name in STRUCTURED_ONLY, name


@pytest.mark.parametrize("method", STRUCTURED_ONLY)
def test_structured_methods_refuse_masks(method):
    with pytest.raises(ConfigError, match="removes whole structures"):
        build_method(method).prune(torch.randn(4, 8), None, 0.5, parse_pattern("unstructured"))


def test_wanda_uses_norm_not_squared_norm():
    # |W|·‖x‖ gives scores 2 and 3 (prune column 0); |W|·‖x‖² gives 4 and 3 (would prune column 1).
    weight = torch.tensor([[1.0, 3.0]])
    x = torch.tensor([[2.0, 1.0]])  # ‖x_0‖ = 2, ‖x_1‖ = 1
    stats = statistics(x, "wanda")
    mask = build_method("wanda").prune(weight, stats, 0.5, parse_pattern("unstructured")).mask
    assert mask.tolist() == [[True, False]]  # scores 2 vs 3
    squared = weight.abs() * stats.squared_norms  # 4 vs 3 would prune column 1
    assert squared.argmin().item() == 1
    assert torch.equal(wanda_scores(weight, stats.norms), torch.tensor([[2.0, 3.0]]))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs(pattern):
    x = correlated_inputs(tokens=512, features=64)
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    errors = {
        method: relative_error(weight, build_method(method).prune(weight, statistics(x, method), 0.5, parse_pattern(pattern)).weight, x)
        for method in ("magnitude", "wanda", "sparsegpt")
    }
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["magnitude"]


def test_sparsegpt_raises_dampening_when_hessian_not_positive_definite():
    stats = InputStatistics(2, hessian=True)
    stats.gram = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # an eigenvalue of -1
    stats.num_tokens = 1
    result = build_method("sparsegpt").prune(torch.randn(4, 2), stats, 0.5, parse_pattern("unstructured"))
    assert result.info["dampening"] > 0.01


def test_sparsegpt_gives_up_with_clear_error():
    stats = InputStatistics(2, hessian=True)
    stats.gram = torch.tensor([[1.0, 50.0], [50.0, 1.0]])
    with pytest.raises(NumericalError, match="not positive definite"):
        build_method("sparsegpt", {"max_dampening": 1.0}).prune(torch.randn(4, 2), stats, 0.5, parse_pattern("unstructured"))


def test_sparsegpt_block_scope_prunes_exact_total():
    x = correlated_inputs()
    weight = torch.randn(8, 32)
    result = build_method("sparsegpt", {"scope": "block", "block_size": 16}).prune(
        weight, statistics(x, "sparsegpt"), 0.5, parse_pattern("unstructured")
    )
    assert int((result.weight == 0).sum()) == 128


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="Did you mean 'block_size'"):
        build_method("sparsegpt", {"blocksize": 64})


def test_statistics_merge_equals_single_pass():
    x = correlated_inputs()
    whole = InputStatistics(32, hessian=True)
    whole.add(x)
    parts = InputStatistics(32, hessian=True)
    half = InputStatistics(32, hessian=True)
    parts.add(x[:100])
    half.add(x[100:])
    parts.merge(half)
    assert parts.num_tokens == whole.num_tokens
    torch.testing.assert_close(parts.gram, whole.gram, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(parts.norms, x.norm(dim=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hessian", [False, True])
def test_one_accumulation_of_many_tokens_counts_every_token(hessian):
    # More tokens in one call than the internal chunk (1,024), as a one-pass batch or a large sequential batch gives.
    x = correlated_inputs(tokens=2500)
    stats = InputStatistics(32, hessian=hessian)
    stats.add(x)
    x64 = x.double()
    assert stats.num_tokens == 2500
    torch.testing.assert_close(stats.norms.double(), x64.norm(dim=0), rtol=1e-5, atol=0)
    torch.testing.assert_close(stats.sum.double(), x64.sum(dim=0), rtol=1e-4, atol=1e-3)
    if hessian:
        torch.testing.assert_close(stats.gram.double(), x64.t() @ x64, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("rows, width", [(40, 600), (700, 130), (3, 128)])
def test_quadratic_trace_from_upper_strips_equals_the_full_product(rows, width):
    # Widths below, at and across strip edges; a correlated, off-centre Gram, so its off-diagonal part weighs as
    # much as its diagonal and a strip counted once instead of twice (or its diagonal square twice) shows.
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2000, width, generator=generator) @ torch.randn(width, width, generator=generator) + 3.0
    gram = x.t() @ x
    a = torch.randn(rows, width, generator=generator)
    want = float(((a.double() @ gram.double()) * a.double()).sum())
    assert float(quadratic_trace(a, gram)) == pytest.approx(want, rel=1e-5)


def test_gram_of_inputs_wider_than_a_strip_is_the_whole_symmetric_product():
    # 600 features: five strips of rows (4 × 128, 88), only blocks on and above the diagonal computed, then mirrored;
    # read between two additions and after a merge, so a stale mirrored copy would show.
    x = torch.randn(1500, 600, generator=torch.Generator().manual_seed(3))
    stats = InputStatistics(600, hessian=True)
    stats.add(x[:700])
    torch.testing.assert_close(stats.gram, x[:700].t() @ x[:700], rtol=1e-4, atol=1e-2)
    stats.add(x[700:1200])
    other = InputStatistics(600, hessian=True)
    other.add(x[1200:])
    stats.merge(other)
    x64 = x.double()
    torch.testing.assert_close(stats.gram.double(), x64.t() @ x64, rtol=1e-4, atol=1e-2)
    assert torch.equal(stats.gram, stats.gram.t())
    torch.testing.assert_close(stats.squared_norms.double(), x64.square().sum(dim=0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("block_size", [128, 24])
def test_sparsegpt_matches_the_reference_column_loop(pattern, block_size):
    x = correlated_inputs(tokens=512, features=96)
    weight = torch.randn(40, 96, generator=torch.Generator().manual_seed(5))
    stats = statistics(x, "sparsegpt")
    result = build_method("sparsegpt", {"block_size": block_size}).prune(weight, stats, 0.5, parse_pattern(pattern))
    expected_weight, expected_mask = fasterprune_reference(weight, stats.gram, 0.5, parse_pattern(pattern), block_size)
    assert torch.equal(result.mask, expected_mask)
    torch.testing.assert_close(result.weight, expected_weight, rtol=1e-4, atol=1e-5)


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_damped_inverse():
    x = correlated_inputs(tokens=300, features=48)
    gram = x.t() @ x
    upper, dampening = inverse_hessian_cholesky(gram, 0.01, 10.0)
    damped = gram + dampening * gram.diagonal().mean() * torch.eye(48)
    assert torch.equal(upper, upper.triu())
    torch.testing.assert_close(upper.t() @ upper, torch.linalg.inv(damped), rtol=1e-3, atol=1e-6)
