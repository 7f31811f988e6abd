"""Block-wise reconstruction (``reconstruct="block"``): masks untouched on every block, each block's error towards
the dense model lowered or the method's weights kept bit for bit, and the whole model closer to the dense one."""

import pytest
import torch

from conftest import TEXT, make_tokenizer, tiny_model, tiny_moe
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.engine import EngineOptions, LayerwiseEngine
from hf_calibprune.engine.block_fit import sample_rows
from hf_calibprune.engine.capture import block_hidden_output
from hf_calibprune.engine.checkpointing import fused_parameters
from hf_calibprune.errors import ConfigError
from hf_calibprune.methods import build_method
from hf_calibprune.reconstruction import BlockReconstructor
from hf_calibprune.sparsity import parse_pattern, uniform_layer_sparsities
from hf_calibprune.models import find_decoder_layout, find_moe_blocks, find_prunable_linears, get_weight

CALIBRATION = [TEXT[i * 7 :] for i in range(8)]
BLOCKS = 3


def pruned(model_type="llama", seed=0, **extra):
    model = tiny_model(model_type, seed=seed, num_hidden_layers=BLOCKS) if model_type == "llama" else tiny_model(model_type, seed=seed)
    config = PruningConfig(
        method=extra.pop("method", "wanda"), pattern=extra.pop("pattern", "2:4"), calibration=CALIBRATION,
        num_samples=8, seq_len=32, batch_size=4, seed=0, **extra,
    )
    return CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)


def logits_error(model, dense, ids) -> float:
    with torch.no_grad():
        return float((model(input_ids=ids).logits - dense(input_ids=ids).logits).square().mean())


FIT = {"learning_rate": 3e-3, "epochs": 3}


@pytest.mark.parametrize(
    "model_type, method, pattern", [("llama", "wanda", "2:4"), ("gpt2", "wanda", "2:4"), ("opt", "sparsegpt", "unstructured")]
)
def test_every_block_keeps_its_mask_and_moves_towards_the_dense_model(model_type, method, pattern):
    plain = pruned(model_type, method=method, pattern=pattern)
    model = pruned(model_type, method=method, pattern=pattern, reconstruct="block", reconstruct_options=FIT)
    layers = model.pruning_report.layers
    blocks = {record.block for record in layers}
    assert len(blocks) == len(find_decoder_layout(model).blocks) >= 2
    for block in blocks:
        info = next(r.info for r in layers if r.block == block)
        assert info["block_reconstructed"], f"block {block}"
        assert info["block_error_after_reconstruct"] < info["block_error_before_reconstruct"], f"block {block}"
        for record in (r for r in layers if r.block == block):
            assert record.info["block_error_after_reconstruct"] == info["block_error_after_reconstruct"]
            assert record.reconstruction_error is not None and record.reconstruction_error > 0, record.name
    parsed = parse_pattern(pattern)
    pairs = zip(find_decoder_layout(model).blocks, find_decoder_layout(plain).blocks, strict=True)
    changed = 0
    for index, (block, plain_block) in enumerate(pairs):
        linears, plain_linears = find_prunable_linears(block), find_prunable_linears(plain_block)
        for name, linear in linears.items():
            weight = get_weight(linear)
            zeros = weight == 0
            if parsed.is_unstructured:
                assert zeros.float().mean() == pytest.approx(0.5, abs=0.02), name
            else:
                assert (zeros.reshape(zeros.shape[0], -1, parsed.m).sum(-1) == parsed.m - parsed.n).all(), name
            if index == 0:  # the same inputs as without reconstruction: exactly the method's mask, other weights
                plain_weight = get_weight(plain_linears[name])
                assert torch.equal(zeros, plain_weight == 0), name
                changed += not torch.equal(weight, plain_weight)
    assert changed == len(find_prunable_linears(find_decoder_layout(model).blocks[0]))
    dense = tiny_model(model_type, num_hidden_layers=BLOCKS) if model_type == "llama" else tiny_model(model_type)
    ids = make_tokenizer()(CALIBRATION[:4], return_tensors="pt", truncation=True, max_length=32).input_ids
    assert logits_error(model, dense, ids) < 0.9 * logits_error(plain, dense, ids)


@pytest.mark.parametrize("architecture", ["mixtral", "qwen2_moe"])
def test_fused_experts_are_refitted_under_their_masks_and_routers_stay(architecture):
    dense = tiny_moe(architecture)
    model = tiny_moe(architecture)
    config = PruningConfig(method="wanda", pattern="2:4", reconstruct="block", reconstruct_options=FIT,
                           calibration=CALIBRATION, num_samples=8, seq_len=32, batch_size=4)
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    for index, (block, dense_block) in enumerate(zip(find_decoder_layout(model).blocks, find_decoder_layout(dense).blocks)):
        for key, (module, name) in fused_parameters(block).items():
            weight, start = getattr(module, name), getattr(fused_parameters(dense_block)[key][0], name)
            assert (weight == 0).float().mean() == 0.5 and not torch.equal(weight, start), f"{index}.{key}"
        for moe in find_moe_blocks(block):
            for router in moe.routers:
                assert torch.equal(block.get_parameter(router), dense_block.get_parameter(router)), router
    infos = {r.block: r.info for r in model.pruning_report.layers}
    assert len(infos) == 2
    assert all(i["block_error_after_reconstruct"] < 0.8 * i["block_error_before_reconstruct"] for i in infos.values())


def test_a_fit_that_would_raise_the_error_is_undone_bit_for_bit():
    plain = pruned()
    model = pruned(reconstruct="block", reconstruct_options={"learning_rate": 10.0, "epochs": 1})
    for record in model.pruning_report.layers:
        assert record.info["block_reconstructed"] is False, record.name
        assert record.info["block_error_after_reconstruct"] == record.info["block_error_before_reconstruct"]
    for (name, got), (_, want) in zip(model.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(got, want), name
    for got, want in zip(model.pruning_report.layers, plain.pruning_report.layers, strict=True):
        assert got.reconstruction_error == pytest.approx(want.reconstruction_error, rel=1e-6), got.name


def test_the_dense_stream_beside_the_pruned_one_is_the_dense_model_s():
    """The targets of the last block are the dense model's own hidden states there, not the pruned model's."""
    model, dense = tiny_model("llama", num_hidden_layers=BLOCKS), tiny_model("llama", num_hidden_layers=BLOCKS)
    ids = torch.randint(4, 99, (4, 16), generator=torch.Generator().manual_seed(0))
    engine = LayerwiseEngine(model, EngineOptions(batch_size=2, progress=False, reconstructor=BlockReconstructor()))
    captured = engine.capture(ids, torch.ones_like(ids))
    engine.prune(build_method("wanda"), parse_pattern("2:4"), uniform_layer_sparsities(
        [engine.layout.block_name(i) for i in range(BLOCKS)], 0.5), captured)
    with torch.no_grad():
        want = dense(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        got = model.model.norm(torch.cat(captured.reference))
        pruned = model.model.norm(torch.cat(captured.hidden))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (pruned - want).abs().max() > 1e-2


def test_sparsity_zero_with_block_reconstruction_leaves_the_model_bit_identical():
    model, dense = pruned(sparsity=0.0, pattern="unstructured", reconstruct="block"), tiny_model("llama", num_hidden_layers=BLOCKS)
    for (name, got), (_, want) in zip(model.state_dict().items(), dense.state_dict().items(), strict=True):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt", "gpt_neox"])
def test_a_step_over_some_samples_computes_what_the_whole_batch_computes_for_them(model_type):
    """Micro-batch steps cut every per-sample call argument (padding masks included), none of the shared ones."""
    model = tiny_model(model_type)
    ids = torch.randint(4, 99, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    engine = LayerwiseEngine(model, EngineOptions(batch_size=4, progress=False))
    captured = engine.capture(ids, mask)
    for index, block in enumerate(engine.layout.blocks):
        call, hidden = captured.calls[0][index], captured.hidden[0]
        with torch.no_grad():
            whole = block_hidden_output(block(hidden, *call.args, **call.kwargs))
            for rows in (slice(1, 2), slice(2, 4)):
                args, kwargs = sample_rows(call.args, rows, 4), sample_rows(call.kwargs, rows, 4)
                part = block_hidden_output(block(hidden[rows], *args, **kwargs))
                real = captured.token_masks[0][rows]
                torch.testing.assert_close(part[real], whole[rows][real], rtol=1e-5, atol=1e-6)
        captured.hidden[0] = whole


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 0}, "'epochs': 0}` must be a whole number of at least 1"),
        ({"learning_rate": -1e-4}, "'learning_rate': -0.0001}` must be a positive number"),
        ({"samples_per_step": 1.5}, "'samples_per_step': 1.5}` must be a whole number"),
        ({"epoch": 2}, "Did you mean 'epochs'?"),
    ],
)
def test_bad_block_options_fail_when_the_config_is_built(options, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        PruningConfig(method="sparsegpt", pattern="2:4", reconstruct="block", reconstruct_options=options)


def test_block_reconstruction_asks_for_the_sequential_schedule():
    with pytest.raises(ConfigError, match="drop `schedule='one-pass'`"):
        PruningConfig(method="wanda", reconstruct="block", schedule="one-pass")
