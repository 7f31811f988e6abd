"""Mask refiners (DSnoT, SparseSwaps): constraints kept, reconstruction error never up, on tensors and a model."""

import itertools

import pytest
import torch

from conftest import TEXT, make_tokenizer, prune_command_config, tiny_model
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.errors import ConfigError
from hf_calibprune.methods import build_method
from hf_calibprune.models import find_decoder_layout, find_prunable_linears, get_weight
from hf_calibprune.refinement import REFINERS, build_refiner
from hf_calibprune.refinement.swaps import SwapState, swap_delta
from hf_calibprune.sparsity import InputStatistics, parse_pattern

CASES = [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", 0.5), ("4:8", 0.5)]


def correlated_inputs(tokens=256, features=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator)
    scale = torch.linspace(0.2, 3.0, features)
    return (torch.randn(tokens, features, generator=generator) @ mixing) * scale


def gram_statistics(x):
    stats = InputStatistics(x.shape[1], hessian=True)
    stats.add(x)
    return stats


def output_error(weight, pruned, x):
    """``‖X Wᵀ − X Ŵᵀ‖²`` from the activations themselves, in float64 (not from the refiner's Gram algebra)."""
    return float(((x.double() @ (weight - pruned).double().t()) ** 2).sum())


def assert_same_constraints(start, refined, pattern):
    assert torch.equal(refined.sum(dim=1), start.sum(dim=1)), "every row keeps its number of pruned weights"
    if not pattern.is_unstructured:
        rows = start.shape[0]
        assert torch.equal(refined.reshape(rows, -1, pattern.m).sum(-1), start.reshape(rows, -1, pattern.m).sum(-1))


@pytest.mark.parametrize("refiner", REFINERS.names())
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "sparsegpt"])
@pytest.mark.parametrize("pattern, sparsity", CASES)
def test_refined_mask_keeps_constraints_and_never_raises_error(refiner, method, pattern, sparsity):
    x = correlated_inputs()
    weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(1))
    stats = gram_statistics(x)
    parsed = parse_pattern(pattern)
    start = build_method(method).prune(weight, stats, sparsity, parsed)
    refined = build_refiner(refiner).refine(weight, start, stats, sparsity, parsed)
    assert_same_constraints(start.mask, refined.mask, parsed)
    assert torch.equal(refined.weight == 0, refined.mask)
    # Kept weights carry the method's value (SparseGPT's update) or, when regrown, the dense value.
    kept_again = ~refined.mask & ~start.mask
    regrown = ~refined.mask & start.mask
    assert torch.equal(refined.weight[kept_again], start.weight[kept_again])
    assert torch.equal(refined.weight[regrown], weight[regrown])
    assert output_error(weight, refined.weight, x) <= output_error(weight, start.weight, x)


@pytest.mark.parametrize("refiner", REFINERS.names())
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_refinement_lowers_wanda_error_on_correlated_inputs(refiner, pattern):
    # Wanda ignores input correlations, so a 1-swap that lowers the error exists; both refiners must find some.
    x = correlated_inputs(tokens=512, features=64)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    stats = gram_statistics(x)
    start = build_method("wanda").prune(weight, stats, 0.5, parse_pattern(pattern))
    refined = build_refiner(refiner).refine(weight, start, stats, 0.5, parse_pattern(pattern))
    assert refined.info["swaps"] > 0
    assert output_error(weight, refined.weight, x) < 0.95 * output_error(weight, start.weight, x)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_swaps_stop_at_a_one_swap_local_optimum(pattern):
    # Brute force: after SparseSwaps converges, no single allowed exchange lowers any row's error.
    x = correlated_inputs(tokens=128, features=12, seed=3)
    weight = torch.randn(5, 12, generator=torch.Generator().manual_seed(4))
    stats = gram_statistics(x)
    parsed = parse_pattern(pattern)
    start = build_method("magnitude", {"scope": "row"}).prune(weight, stats, 0.5, parsed)
    refined = build_refiner("swaps", {"max_iterations": 1000, "tolerance": 0.0}).refine(weight, start, stats, 0.5, parsed)
    assert refined.info["swaps"] > 0
    gram = stats.gram.double()
    for row in range(weight.shape[0]):
        mask = refined.mask[row]
        base = _row_error(weight[row], mask, gram)
        for p, q in itertools.product((~mask).nonzero().flatten().tolist(), mask.nonzero().flatten().tolist()):
            if not parsed.is_unstructured and p // parsed.m != q // parsed.m:
                continue
            swapped = mask.clone()
            swapped[p], swapped[q] = True, False
            assert _row_error(weight[row], swapped, gram) >= base * (1 - 1e-9)


def _row_error(row, mask, gram):
    removed = row.double() * mask
    return float(removed @ gram @ removed)


def test_swap_delta_matches_recomputed_error():
    x = correlated_inputs(features=16)
    weight = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    stats = gram_statistics(x)
    start = build_method("sparsegpt").prune(weight, stats, 0.5, parse_pattern("unstructured"))
    state = SwapState(weight, start)
    gram = stats.gram.double()
    removed = state.removed()[0].double()
    p = int(state.keep[0].nonzero()[0])
    q = int((~state.keep[0]).nonzero()[0])
    before = float(removed @ gram @ removed)
    predicted = float(swap_delta(state.values[0].double(), removed, gram, p, q))
    state.swap(torch.tensor([0]), torch.tensor([p]), torch.tensor([q]))
    after_removed = state.removed()[0].double()
    assert float(after_removed @ gram @ after_removed) - before == pytest.approx(predicted, rel=1e-6, abs=1e-6)


def test_candidate_search_keeps_the_guarantees():
    x = correlated_inputs(tokens=512, features=64)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(6))
    stats = gram_statistics(x)
    parsed = parse_pattern("unstructured")
    start = build_method("wanda").prune(weight, stats, 0.5, parsed)
    refined = build_refiner("swaps", {"candidates": 4}).refine(weight, start, stats, 0.5, parsed)
    assert_same_constraints(start.mask, refined.mask, parsed)
    assert output_error(weight, refined.weight, x) < output_error(weight, start.weight, x)


def test_rows_with_different_counts_keep_their_own_counts():
    # Magnitude's default compares across the whole matrix, so rows start with different counts.
    x = correlated_inputs()
    weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(7)) * torch.linspace(0.1, 2, 24).unsqueeze(1)
    stats = gram_statistics(x)
    start = build_method("magnitude").prune(weight, stats, 0.5, parse_pattern("unstructured"))
    assert start.mask.sum(dim=1).unique().numel() > 1
    for name in REFINERS.names():
        refined = build_refiner(name).refine(weight, start, stats, 0.5, parse_pattern("unstructured"))
        assert torch.equal(refined.mask.sum(dim=1), start.mask.sum(dim=1))


def test_zero_iterations_is_identity():
    x = correlated_inputs()
    weight = torch.randn(8, 32)
    stats = gram_statistics(x)
    start = build_method("wanda").prune(weight, stats, 0.5, parse_pattern("unstructured"))
    for name in REFINERS.names():
        refined = build_refiner(name, {"max_iterations": 0}).refine(weight, start, stats, 0.5, parse_pattern("unstructured"))
        assert torch.equal(refined.mask, start.mask)
        assert torch.equal(refined.weight, start.weight)


def test_refiners_need_the_gram_matrix():
    x = correlated_inputs()
    stats = InputStatistics(32, hessian=False)
    stats.add(x)
    weight = torch.randn(8, 32)
    start = build_method("wanda").prune(weight, stats, 0.5, parse_pattern("unstructured"))
    for name in REFINERS.names():
        with pytest.raises(ConfigError, match="Gram matrix"):
            build_refiner(name).refine(weight, start, stats, 0.5, parse_pattern("unstructured"))


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="Did you mean 'max_iterations'"):
        build_refiner("swaps", {"max_iteration": 3})
    with pytest.raises(ConfigError, match="max_iterations"):
        build_refiner("dsnot", {"max_iterations": -1})
    with pytest.raises(ConfigError, match="candidates"):
        build_refiner("swaps", {"candidates": 0})


CALIBRATION = [f"Sample {i}. " + TEXT[i * 11 :] for i in range(8)]


@pytest.mark.parametrize(
    "method, refine, pattern",
    [("wanda", "swaps", "unstructured"), ("wanda", "dsnot", "2:4"), ("sparsegpt", "swaps", "2:4"), ("ria", "dsnot", "unstructured")],
)
def test_pruner_records_error_before_and_after_on_every_linear(method, refine, pattern):
    model = tiny_model("llama")
    config = PruningConfig(
        method=method, refine=refine, pattern=pattern, sparsity=0.5, calibration=CALIBRATION, num_samples=4, seq_len=32
    )
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    report = model.pruning_report
    assert len(report.layers) == 14
    improved = 0
    for record in report.layers:
        before, after = record.info["error_before_refine"], record.info["error_after_refine"]
        assert after <= before * (1 + 1e-6), record.name  # float32 evaluation of the same sums
        improved += after < before * (1 - 1e-4)
    assert improved > 0
    parsed = parse_pattern(pattern)
    for block in find_decoder_layout(model).blocks:
        for linear in find_prunable_linears(block).values():
            zeros = get_weight(linear) == 0
            if parsed.is_unstructured:
                assert (zeros.sum(dim=1) == zeros.shape[1] // 2).all()
            else:
                assert (zeros.reshape(zeros.shape[0], -1, parsed.m).sum(-1) == parsed.m - parsed.n).all()


def first_block_statistics(linear_name):
    """Calibration ids for the engine, and the Gram statistics and dense weight of ``linear_name`` in the first
    block of a tiny Llama, gathered by hand from the same captured inputs the engine will see."""
    from hf_calibprune.engine import EngineOptions, LayerwiseEngine
    from hf_calibprune.engine.hooks import StatisticsCollector

    ids = torch.randint(4, 99, (4, 24), generator=torch.Generator().manual_seed(0))
    dense = tiny_model("llama")
    block = dense.model.layers[0]
    linears = find_prunable_linears(block)
    reference = LayerwiseEngine(dense, EngineOptions(batch_size=4, progress=False))
    captured = reference.capture(ids, torch.ones_like(ids))
    collector = StatisticsCollector(linears, hessian=True)
    reference._run_block(block, 0, captured, collector, keep_outputs=False)
    collector.remove()
    return ids, collector.stats[linear_name], get_weight(linears[linear_name]).detach().float().clone()


def prune_tiny_llama(method, pattern, ids, **options):
    """A tiny Llama pruned by the engine with ``options`` (refiner, reconstructor), and its layer records."""
    from hf_calibprune.engine import EngineOptions, LayerwiseEngine

    model = tiny_model("llama")
    engine = LayerwiseEngine(model, EngineOptions(batch_size=4, progress=False, **options))
    names = {engine.layout.block_name(i): 0.5 for i in range(len(engine.layout.blocks))}
    layers, _ = engine.prune(method, pattern, names, engine.capture(ids, torch.ones_like(ids)))
    return model, layers


def test_refined_model_matches_refiner_applied_by_hand():
    # The engine's refined weights are what the refiner returns for the statistics the engine gathered:
    # rerun the first Linear by hand from the same captured inputs.
    ids, stats, weight = first_block_statistics("self_attn.q_proj")
    pattern = parse_pattern("unstructured")
    expected = build_refiner("swaps").refine(weight, build_method("wanda").prune(weight, stats, 0.5, pattern), stats, 0.5, pattern)
    model, layers = prune_tiny_llama(build_method("wanda"), pattern, ids, refiner=build_refiner("swaps"))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight.detach(), expected.weight)
    assert layers[0].info["swaps"] == expected.info["swaps"]


def test_command_line_sets_refine_and_its_options():
    config = prune_command_config(
        "--method", "ria", "--refine", "swaps", "--refine-option", "max_iterations=5", "--refine-option", "candidates=8"
    )
    assert (config.method, config.refine) == ("ria", "swaps")
    assert config.refine_options == {"max_iterations": 5, "candidates": 8}
    with pytest.raises(ConfigError, match="swaps"):  # a did-you-mean from PruningConfig's validation
        prune_command_config("--refine", "swap")
