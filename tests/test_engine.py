"""The layer-by-layer engine on tiny random models, fed token tensors directly."""

import pytest
import torch

from conftest import tiny_model
from hf_calibprune.engine import EngineOptions, LayerwiseEngine
from hf_calibprune.engine.hooks import StatisticsCollector
from hf_calibprune.errors import NumericalError
from hf_calibprune.methods import build_method
from hf_calibprune.methods.base import PruningMethod
from hf_calibprune.models import find_prunable_linears, get_weight
from hf_calibprune.sparsity import parse_pattern


def tokens(batch=6, length=24, seed=0, pad_first=8):
    ids = torch.randint(4, 99, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if pad_first:
        mask[0, -pad_first:] = 0
    return ids, mask


def run(model, method="wanda", pattern="unstructured", sparsity=0.5, schedule="sequential", batch_size=4):
    engine = LayerwiseEngine(model, EngineOptions(batch_size=batch_size, schedule=schedule, progress=False))
    ids, mask = tokens()
    captured = engine.capture(ids, mask)
    names = {engine.layout.block_name(i): sparsity for i in range(len(engine.layout.blocks))}
    return engine.prune(build_method(method), parse_pattern(pattern), names, captured)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2", "opt"])
def test_replaying_captured_calls_reproduces_the_model(model_type):
    # Gemma2 alternates sliding-window and full attention: each block must get its own mask.
    model = tiny_model(model_type, **({"sliding_window": 4} if model_type == "gemma2" else {}))
    ids, mask = tokens(pad_first=0)
    engine = LayerwiseEngine(model, EngineOptions(batch_size=3, progress=False))
    captured = engine.capture(ids, mask)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for index, block in enumerate(engine.layout.blocks[:-1]):
        engine._run_block(block, index, captured, None, keep_outputs=True)
        replayed = torch.cat(captured.hidden)
        torch.testing.assert_close(replayed, expected[index + 1], rtol=1e-5, atol=1e-5)


def test_wanda_mask_matches_direct_computation_from_full_activations():
    model = tiny_model("llama")
    layer = model.model.layers[0]
    with torch.no_grad():  # spread the channel norms so the ranking depends on them
        layer.input_layernorm.weight.copy_(torch.linspace(0.1, 4.0, 32))
    ids, mask = tokens()
    seen = []
    handle = layer.self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    activations = torch.cat(seen).reshape(-1, 32)[mask.reshape(-1).bool()]
    weight = layer.self_attn.q_proj.weight.detach().clone()
    norm = activations.norm(dim=0)
    expected = torch.zeros_like(weight, dtype=torch.bool).scatter_(
        1, torch.topk(weight.abs() * norm, 16, dim=1, largest=False).indices, True
    )
    squared = torch.zeros_like(expected).scatter_(
        1, torch.topk(weight.abs() * norm.square(), 16, dim=1, largest=False).indices, True
    )
    assert not torch.equal(expected, squared), "test input must separate the norm from the squared norm"
    run(model, "wanda")
    assert torch.equal(layer.self_attn.q_proj.weight == 0, expected)


def test_padding_is_excluded_from_statistics():
    model = tiny_model("llama")
    block = model.model.layers[0]
    linears = find_prunable_linears(block)
    ids, mask = tokens(pad_first=10)
    engine = LayerwiseEngine(model, EngineOptions(batch_size=6, progress=False))
    captured = engine.capture(ids, mask)
    collector = StatisticsCollector(linears, hessian=False)
    engine._run_block(block, 0, captured, collector, keep_outputs=False)
    collector.remove()
    assert collector.stats["self_attn.q_proj"].num_tokens == int(mask.sum())
    assert collector.stats["self_attn.q_proj"] is collector.stats["self_attn.k_proj"]
    assert collector.stats["mlp.gate_proj"] is collector.stats["mlp.up_proj"]
    assert collector.stats["mlp.down_proj"] is not collector.stats["mlp.up_proj"]


@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_every_linear_reaches_its_target(schedule, method, pattern):
    model = tiny_model("llama")
    layers, blocks = run(model, method, pattern, schedule=schedule)
    assert len(layers) == 14 and len(blocks) == 2
    for block in model.model.layers:
        for name, module in find_prunable_linears(block).items():
            zeros = get_weight(module) == 0
            if pattern == "2:4":
                assert (zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all(), name
            elif method == "magnitude":
                assert int(zeros.sum()) == zeros.numel() // 2, name
            else:
                assert (zeros.sum(1) == zeros.shape[1] // 2).all(), name
    assert all(0 <= layer.reconstruction_error < 1 for layer in layers)


def test_one_pass_prunes_like_sequential_on_the_first_linears():
    sequential, one_pass = tiny_model("llama"), tiny_model("llama")
    run(sequential, "wanda")
    run(one_pass, "wanda", schedule="one-pass")
    first = lambda m: m.model.layers[0].self_attn.q_proj.weight  # noqa: E731 - same inputs under both schedules
    assert torch.equal(first(sequential) == 0, first(one_pass) == 0)


def test_zero_sparsity_leaves_the_model_bit_identical():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, "sparsegpt", sparsity=0.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Exploding(PruningMethod):
    name = "exploding"
    Options = dict
    needs = "norms"

    def prune(self, weight, stats, sparsity, pattern):
        raise NumericalError("boom")


def test_hooks_and_blocks_are_restored_after_an_error():
    model = tiny_model("llama")
    blocks = list(model.model.layers)
    engine = LayerwiseEngine(model, EngineOptions(progress=False))
    ids, mask = tokens()
    captured = engine.capture(ids, mask)
    with pytest.raises(NumericalError, match=r"model\.layers\.0\.self_attn\.q_proj: boom"):
        engine.prune(_Exploding(), parse_pattern("unstructured"), {"model.layers.0": 0.5, "model.layers.1": 0.5}, captured)
    assert list(model.model.layers) == blocks
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_nan_activations_stop_with_the_block_named():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    with pytest.raises(NumericalError, match="model.layers.0"):
        run(model, "magnitude")


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_statistics_pass_stops_after_the_last_linear_input_with_the_same_statistics(model_type):
    model = tiny_model(model_type)
    engine = LayerwiseEngine(model, EngineOptions(batch_size=2, progress=False))
    captured = engine.capture(*tokens())
    block = engine.layout.blocks[0]
    linears = find_prunable_linears(block)
    computed: list[str] = []
    handles = [m.register_forward_hook(lambda m, a, o, n=n: computed.append(n)) for n, m in linears.items()]
    gathered = {}
    for stop_early in (False, True):
        computed.clear()
        collector = StatisticsCollector(linears, hessian=True, stop_early=stop_early)
        engine._run_block(block, 0, captured, collector, keep_outputs=False)
        collector.remove()
        gathered[stop_early] = ({n: s.gram.clone() for n, s in collector.stats.items()}, list(computed))
    for handle in handles:
        handle.remove()
    full, stopped = gathered[False], gathered[True]
    assert full[0].keys() == stopped[0].keys() == linears.keys()
    for name in linears:
        torch.testing.assert_close(stopped[0][name], full[0][name], rtol=0, atol=0)
    last = full[1][-1]
    batches = len(captured.hidden)
    assert full[1].count(last) == batches
    assert stopped[1].count(last) == 1, "only the first batch runs the last Linear"


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_statistics_passes_of_later_blocks_stop_early_from_their_first_batch(model_type):
    # Block 0 learns the Linear call order in its first batch; every later block of the same structure stops each
    # batch of its statistics pass, the first included, before its last Linear. So that Linear runs only in the
    # pass that writes the pruned block's outputs: once per batch, and once more in block 0.
    model = tiny_model(model_type)
    engine = LayerwiseEngine(model, EngineOptions(batch_size=2, progress=False))
    captured = engine.capture(*tokens())
    batches = len(captured.hidden)
    calls = []
    for index, block in enumerate(engine.layout.blocks):
        last = list(find_prunable_linears(block).values())[-1]
        last.register_forward_hook(lambda m, a, o, i=index: calls.append(i))
    names = {engine.layout.block_name(i): 0.5 for i in range(len(engine.layout.blocks))}
    engine.prune(build_method("wanda"), parse_pattern("unstructured"), names, captured)
    assert [calls.count(i) for i in range(len(engine.layout.blocks))] == [batches + 1] + [batches] * (
        len(engine.layout.blocks) - 1
    )


def test_an_expected_call_order_that_does_not_fit_the_block_loses_no_statistics():
    # A wrong order (reversed) is never matched, so the first batch runs whole and teaches the real one; an order
    # that misses a Linear is not used at all. Either way every Linear gets every batch's tokens.
    model = tiny_model("llama")
    engine = LayerwiseEngine(model, EngineOptions(batch_size=2, progress=False))
    captured = engine.capture(*tokens())
    block = engine.layout.blocks[0]
    linears = find_prunable_linears(block)
    full = StatisticsCollector(linears, hessian=False)
    engine._run_block(block, 0, captured, full, keep_outputs=False)
    full.remove()
    order = full.call_order
    for expected in (order[::-1], order[:-1]):
        collector = StatisticsCollector(linears, hessian=False, stop_early=True, expected_calls=expected)
        engine._run_block(block, 0, captured, collector, keep_outputs=False)
        collector.remove()
        assert collector.call_order == order
        for name in linears:
            assert collector.stats[name].num_tokens == full.stats[name].num_tokens, name
            torch.testing.assert_close(collector.stats[name].squared_norms, full.stats[name].squared_norms)
