"""Faults injected into real pruning runs: ill-conditioned Hessians, NaN/inf, fp16/bf16 overflow, out of memory.

Each test records what it injected with ``record_property("reliability", ...)`` for
``tests/reliability_report.py``, which writes docs/reliability.md.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TEXT, make_tokenizer, tiny_model
from hf_calibprune import CalibPruneError, CalibratedPruner, PruningConfig, PruningReport
from hf_calibprune.engine import EngineOptions, LayerwiseEngine
from hf_calibprune.errors import AcceleratorMemoryError
from hf_calibprune.engine.hooks import StatisticsCollector
from hf_calibprune.errors import NumericalError
from hf_calibprune.methods import build_method
from hf_calibprune.models import find_prunable_linears
from hf_calibprune.sparsity import parse_pattern


def config(**overrides) -> PruningConfig:
    values = dict(method="sparsegpt", sparsity=0.5, calibration=[TEXT], num_samples=4, seq_len=32, batch_size=2)
    return PruningConfig(**{**values, **overrides})


def prune(cfg, net, **kwargs):
    return CalibratedPruner(cfg, tokenizer=make_tokenizer(), progress=False, **kwargs).prune(net)


def linears(net):
    return [m for block in net.model.layers for m in find_prunable_linears(block).values()]


def assert_clean(net):
    """After an error: blocks back in place, no hook of ours left."""
    assert all(type(block).__name__ == "LlamaDecoderLayer" for block in net.model.layers)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())


# --------------------------------------------------------------------------------------------------
# SparseGPT: a Hessian that is not positive definite
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, overrides, dead",
    [
        ("too few samples (8 tokens for 32 inputs)", dict(num_samples=1, seq_len=8, batch_size=1), False),
        ("dead channels (half the inputs always zero) and few samples", dict(num_samples=1, seq_len=16), True),
    ],
    ids=["few-samples", "dead-channels"],
)
def test_sparsegpt_retries_an_ill_conditioned_hessian_with_more_dampening(tmp_path, record_property, case, overrides, dead):
    record_property("reliability", {"kind": "fault", "case": f"SparseGPT Hessian not positive definite: {case}",
                                    "expect": "retried with 10x dampening, recorded in the report"})
    net = tiny_model("llama")
    if dead:
        with torch.no_grad():
            for block in net.model.layers:
                block.input_layernorm.weight[::2] = 0
    requested = 1e-10  # so small that the factorization of a rank-deficient Hessian fails in float32
    prune(config(method_options={"dampening": requested}, **overrides), net)
    report = net.pruning_report
    used = [record.info["dampening"] for record in report.layers]
    assert all(d >= requested for d in used)
    assert any(d > requested for d in used), "no Linear needed a retry: the test input is too well conditioned"
    assert all(torch.isfinite(m.weight).all() for m in linears(net))
    assert all(abs(r.measured_sparsity - 0.5) < 1e-6 for r in report.layers)
    report.save(tmp_path / "report.json")  # the report keeps what was used
    assert [r.info["dampening"] for r in PruningReport.load(tmp_path / "report.json").layers] == used


def test_well_conditioned_hessian_keeps_the_requested_dampening(record_property):
    net = tiny_model("llama")
    prune(config(num_samples=4, seq_len=64), net)
    assert {r.info["dampening"] for r in net.pruning_report.layers} == {0.01}


def test_sparsegpt_gives_up_past_max_dampening_naming_the_linear(record_property):
    record_property("reliability", {"kind": "fault", "case": "SparseGPT Hessian still not positive definite at "
                                    "max_dampening", "expect": "NumericalError naming the Linear and the fix"})
    net = tiny_model("llama")
    with pytest.raises(NumericalError, match=r"model\.layers\.0\.self_attn\.q_proj: the Hessian is not positive "
                                             r"definite.*more calibration samples"):
        prune(config(num_samples=1, seq_len=8, batch_size=1, method_options={"dampening": 1e-10, "max_dampening": 1e-9}), net)
    assert_clean(net)


# --------------------------------------------------------------------------------------------------
# NaN / inf
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_weights_stop_with_the_block_and_linear_named(record_property, method, value):
    record_property("reliability", {"kind": "fault", "case": f"{value} in a weight of block 1 ({method})",
                                    "expect": "NumericalError naming model.layers.1.mlp.up_proj"})
    net = tiny_model("llama")
    with torch.no_grad():
        net.model.layers[1].mlp.up_proj.weight[3, 5] = value
    with pytest.raises(NumericalError, match=r"model\.layers\.1\.mlp\.up_proj has NaN or inf weights"):
        prune(config(method=method), net)
    assert_clean(net)


@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_nan_activations_stop_with_the_block_and_linear_named(record_property, method, schedule):
    record_property("reliability", {"kind": "fault", "case": f"NaN activations entering block 1 ({method}, {schedule})",
                                    "expect": "NumericalError naming model.layers.1 and its first Linear"})
    net = tiny_model("llama")
    with torch.no_grad():
        net.model.layers[1].input_layernorm.weight[0] = float("nan")
    with pytest.raises(NumericalError, match=r"model\.layers\.1\.self_attn\.q_proj received NaN or inf inputs in "
                                             r"block model\.layers\.1"):
        prune(config(method=method, schedule=schedule), net)
    assert_clean(net)
    assert (net.model.layers[0].mlp.down_proj.weight == 0).any(), "block 0 was pruned before the fault"


def test_fp16_overflow_inside_a_block_is_named(record_property):
    record_property("reliability", {"kind": "fault", "case": "fp16 model whose MLP overflows to inf",
                                    "expect": "NumericalError naming model.layers.0.mlp.down_proj, advising bf16/fp32"})
    net = tiny_model("llama", dtype=torch.float16)
    with torch.no_grad():
        net.model.layers[0].post_attention_layernorm.weight.fill_(1e4)
    with pytest.raises(NumericalError, match=r"model\.layers\.0\.mlp\.down_proj received NaN or inf.*bfloat16 or float32"):
        prune(config(method="wanda"), net)
    assert_clean(net)


# --------------------------------------------------------------------------------------------------
# fp16 / bf16: statistics in float32
# --------------------------------------------------------------------------------------------------
def _loud_model(dtype):
    """Block 0's attention inputs are ~1e4 in magnitude (their squares overflow fp16); q/k/v are scaled down so that
    the forward pass itself stays finite."""
    net = tiny_model("llama", dtype=dtype)
    block = net.model.layers[0]
    with torch.no_grad():
        block.input_layernorm.weight.copy_(torch.linspace(0.5e4, 2e4, 32))
        for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
            proj.weight.mul_(1e-2)
    return net


def _long_tokens(batch=4, length=256):
    ids = torch.randint(4, 99, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, -40:] = 0
    return ids, mask


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_statistics_stay_finite_and_match_float32(record_property, dtype):
    record_property("reliability", {"kind": "fault", "case": f"{str(dtype)[6:]} model, ~1e4-magnitude activations, "
                                    "4 x 256 tokens", "expect": "float32 statistics: finite, Wanda mask equal to float32"})
    net = _loud_model(dtype)
    block = net.model.layers[0]
    ids, mask = _long_tokens()
    seen = []
    handle = block.self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        net(input_ids=ids, attention_mask=mask)
    handle.remove()
    inputs = torch.cat(seen).reshape(-1, 32)[mask.reshape(-1).bool()]
    assert inputs.abs().max() > 1e4, "the test needs large activations"
    if dtype == torch.float16:
        assert not torch.isfinite(inputs.square().sum(0)).all(), "the test input must overflow fp16 arithmetic"

    # Gram matrix (SparseGPT) and squared norms as the engine gathers them, against float64.
    engine = LayerwiseEngine(net, EngineOptions(batch_size=4, progress=False))
    captured = engine.capture(ids, mask)
    collector = StatisticsCollector(find_prunable_linears(block), hessian=True)
    engine._run_block(block, 0, captured, collector, keep_outputs=False)
    collector.remove()
    stats = collector.stats["self_attn.q_proj"]
    assert stats.gram.dtype == torch.float32 and torch.isfinite(stats.gram).all()
    reference = inputs.double().t() @ inputs.double()
    # float32 accumulation: each entry within 1e-5 of the matrix's scale (the squared norms within 1e-5 relative)
    torch.testing.assert_close(stats.gram.double(), reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    torch.testing.assert_close(stats.squared_norms.double(), reference.diagonal(), rtol=1e-5, atol=0.0)

    # Wanda's mask from the fp16/bf16 model equals the one computed in float32 from the same inputs.
    weight = block.self_attn.q_proj.weight.detach().float().clone()
    norm = inputs.float().norm(dim=0)
    expected = torch.zeros_like(weight, dtype=torch.bool).scatter_(
        1, torch.topk(weight.abs() * norm, 16, dim=1, largest=False).indices, True
    )
    if dtype == torch.bfloat16:  # a running sum in bf16 loses enough precision to change the mask
        running = torch.zeros(32, dtype=dtype)
        for row in inputs:
            running += row.square()
        wrong = torch.zeros_like(expected).scatter_(
            1, torch.topk(weight.abs() * running.float().sqrt(), 16, dim=1, largest=False).indices, True
        )
        assert not torch.equal(wrong, expected), "the test input must separate float32 from bf16 accumulation"
    captured = engine.capture(ids, mask)
    engine.prune(build_method("wanda"), parse_pattern("unstructured"), {"model.layers.0": 0.5, "model.layers.1": 0.5}, captured)
    assert torch.equal(block.self_attn.q_proj.weight == 0, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_sparsegpt_end_to_end_with_large_activations(record_property, dtype):
    record_property("reliability", {"kind": "fault", "case": f"SparseGPT on a {str(dtype)[6:]} model with ~1e4 "
                                    "activations", "expect": "finite weights at the requested sparsity"})
    net = _loud_model(dtype)
    prune(config(num_samples=4, seq_len=128), net)
    assert all(torch.isfinite(m.weight).all() and m.weight.dtype == dtype for m in linears(net))
    assert all(abs(r.measured_sparsity - 0.5) < 1e-6 for r in net.pruning_report.layers)


# --------------------------------------------------------------------------------------------------
# Out of memory
# --------------------------------------------------------------------------------------------------
def _out_of_memory(module, args):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total capacity)")


@pytest.mark.parametrize("where", ["block", "capture"])
def test_out_of_memory_names_the_knobs_that_help(tmp_path, record_property, where):
    record_property("reliability", {"kind": "fault", "case": f"torch.OutOfMemoryError raised during the {where} pass",
                                    "expect": "CalibPruneError listing batch_size, activation_device, one block at a "
                                              "time; resumable"})
    net = tiny_model("llama", num_hidden_layers=3)
    target = net.model.layers[1].mlp if where == "block" else net.model.embed_tokens
    handle = target.register_forward_pre_hook(_out_of_memory)
    with pytest.raises(AcceleratorMemoryError) as caught:
        prune(config(batch_size=4, schedule="one-pass"), net, checkpoint_dir=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, CalibPruneError) and isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    for knob in ("CUDA out of memory", "batch_size=2", "schedule='sequential'", "activation_device='cpu'",
                 "one block at a time", "num_samples (now 4)", str(tmp_path)):
        assert knob in message, knob
    assert_clean_except(net, handle)
    handle.remove()
    if where == "block":  # the advice works: the finished block is kept, the rest is pruned at a smaller batch size
        calls = [0]
        net2 = tiny_model("llama", num_hidden_layers=3)
        net2.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
        prune(config(batch_size=2, schedule="one-pass"), net2, checkpoint_dir=tmp_path)
        assert calls[0] == 1  # the capture's single probe of block 0 only: it was restored, not pruned again
        assert len(net2.pruning_report.layers) == 21


def assert_clean_except(net, handle):
    hooked = [m for m in net.modules() if m._forward_pre_hooks or m._forward_hooks]
    assert len(hooked) == 1 and handle.id in hooked[0]._forward_pre_hooks
    assert all(type(block).__name__ == "LlamaDecoderLayer" for block in net.model.layers)


def test_out_of_memory_without_a_checkpoint_suggests_one():
    net = tiny_model("llama")
    net.model.layers[0].mlp.register_forward_pre_hook(_out_of_memory)
    with pytest.raises(AcceleratorMemoryError, match=r"batch_size=1 .*Pass checkpoint_dir= \(--resume-dir\)"):
        prune(config(batch_size=2, activation_device="cpu"), net)
