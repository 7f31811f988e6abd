"""Structured pruning: heads, MLP channels and decoder blocks removed, config rewritten, checkpoint loads anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TEXT, make_tokenizer, tiny_model
from hf_calibprune import CalibratedPruner, ConfigError, PruningConfig, save_sparse
from hf_calibprune.models import find_decoder_layout
from hf_calibprune.models.surgery import block_width

ARCHITECTURES = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": 8},
    "gemma2": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "phi3": {},
    "gpt_neox": {},
}
TEXTS = [f"Sample {i}. " + TEXT[i * 7 :] for i in range(12)]
IDS = torch.tensor([[5, 40, 41, 42, 17, 60, 61, 70, 71, 72, 80, 81, 82, 83, 84, 85] * 2])


def model_of(model_type: str, **overrides):
    return tiny_model(model_type, **{"num_hidden_layers": 4, **ARCHITECTURES[model_type], **overrides})


def config_of(method: str, pattern: str, sparsity: float, **extra) -> PruningConfig:
    return PruningConfig(
        method=method, pattern=pattern, sparsity=sparsity, calibration=TEXTS, num_samples=6, seq_len=32,
        batch_size=2, seed=0, **extra,
    )


def prune(model, tokenizer, method, pattern, sparsity, **extra):
    return CalibratedPruner(config_of(method, pattern, sparsity, **extra), tokenizer=tokenizer, progress=False).prune(model)


def block_parameters(model) -> list[int]:
    return [sum(p.numel() for p in block.parameters()) for block in find_decoder_layout(model).blocks]


def structure_size(model, pattern) -> int:
    """Parameters of the largest single structure of the pattern (one block, or one MLP channel / k/v group)."""
    block = find_decoder_layout(model).blocks[0]
    if pattern == "blocks":
        return sum(p.numel() for p in block.parameters())
    width = block_width(model, block)
    return max(width.channel_parameters(), width.group_parameters())


RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    assert "hf_calibprune" not in sys.modules
    jobs = json.loads(sys.argv[1])
    ids = torch.tensor(jobs["ids"])
    for directory in jobs["dirs"]:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(ids).logits
        generated = model.generate(ids[:, :8], max_new_tokens=6, do_sample=False)
        torch.save({"logits": logits, "generated": generated}, directory + "/reloaded.pt")
    assert "hf_calibprune" not in sys.modules
    """
)


def reload_in_fresh_process(directories: list[Path]) -> list[dict]:
    """Load each checkpoint with plain transformers in a process that never imports hf_calibprune."""
    jobs = json.dumps({"dirs": [str(d) for d in directories], "ids": IDS.tolist()})
    done = subprocess.run([sys.executable, "-c", RELOAD, jobs], capture_output=True, text=True, cwd=directories[0].parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(d / "reloaded.pt") for d in directories]


CASES = [("flap", "channels", 0.25), ("block-influence", "blocks", 0.25)]


@pytest.fixture(scope="module")
def pruned_checkpoints(tmp_path_factory, tokenizer) -> dict:
    """Every architecture × case pruned, measured and saved; all reloaded in one fresh process at the end."""
    root = tmp_path_factory.mktemp("structured")
    results = {}
    for model_type in ARCHITECTURES:
        for method, pattern, sparsity in CASES:
            model = model_of(model_type)
            before = sum(block_parameters(model))
            size = structure_size(model, pattern)
            model = prune(model, tokenizer, method, pattern, sparsity)
            with torch.no_grad():
                logits = model(IDS).logits
            directory = root / f"{model_type}-{method}"
            save_sparse(model, directory, tokenizer=tokenizer)
            results[model_type, method] = dict(
                before=before, size=size, after=block_parameters(model), sparsity=sparsity, pattern=pattern,
                structure=model.pruning_report.structure, logits=logits, directory=directory,
                table=model.pruning_report.summary_table(),
            )
    reloaded = reload_in_fresh_process([r["directory"] for r in results.values()])
    for result, loaded in zip(results.values(), reloaded):
        result["reloaded"] = loaded
    return results


@pytest.mark.parametrize("method", [case[0] for case in CASES])
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_pruned_size_is_the_requested_one_in_every_block(pruned_checkpoints, model_type, method):
    result = pruned_checkpoints[model_type, method]
    before, after = result["before"], result["after"]
    removed = before - sum(after)
    # Within one structure of the request, counted over all blocks (half a structure of rounding per block).
    assert abs(removed - result["sparsity"] * before) <= result["size"] * len(after) / 2 + 1, (before, after)
    assert removed > 0
    assert len(set(after)) == 1  # the same count in every block: one ordinary config
    assert result["structure"]["parameters_before"] == before
    assert result["structure"]["parameters_after"] == sum(after)


@pytest.mark.parametrize("method", [case[0] for case in CASES])
@pytest.mark.parametrize("model_type", ["llama", "phi3"])
def test_the_summary_table_gives_the_fraction_removed_and_no_zero_count(pruned_checkpoints, model_type, method):
    """Structures are removed, not zeroed: a 'pruned matrices' row of zeros would read as 0 % pruned."""
    result = pruned_checkpoints[model_type, method]
    removed = (result["before"] - sum(result["after"])) / result["before"]
    lines = result["table"].splitlines()
    assert not any(line.startswith(("pruned matrices", "all block weights")) for line in lines)
    [total] = [line for line in lines if line.startswith("block parameters removed")]
    assert f"{removed:9.4f}" in total


@pytest.mark.parametrize("method", [case[0] for case in CASES])
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_saved_checkpoint_reloads_without_the_package_with_equal_logits(pruned_checkpoints, model_type, method):
    result = pruned_checkpoints[model_type, method]
    saved = json.loads((result["directory"] / "config.json").read_text())
    assert "quantization_config" not in saved
    if result["pattern"] == "blocks":
        assert saved["num_hidden_layers"] == 3
    else:
        assert saved["intermediate_size"] < 64
    assert torch.allclose(result["reloaded"]["logits"], result["logits"], atol=1e-5, rtol=1e-4)
    assert result["reloaded"]["generated"].shape == (1, 14)


@pytest.mark.parametrize("method, pattern", [("flap", "channels"), ("magnitude", "channels"), ("block-influence", "blocks")])
@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_removing_zero_structures_is_bit_identical(model_type, method, pattern, tokenizer):
    original = model_of(model_type)
    pruned = prune(model_of(model_type), tokenizer, method, pattern, 0.0)
    assert pruned.config.to_dict() == original.config.to_dict()
    reference = original.state_dict()
    state = pruned.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[key], reference[key]) for key in reference)


def block_output_error(model, dense, tokenizer) -> float:
    """‖Y − Ŷ‖² / ‖Y‖² of every block's output (dense block outputs as reference), on the calibration tokens."""
    from hf_calibprune.calibration import build_calibration_samples

    ids = build_calibration_samples(TEXTS, tokenizer, num_samples=6, seq_len=32, seed=0, model=dense).input_ids

    def outputs(m):
        seen = []
        handles = [b.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
                   for b in find_decoder_layout(m).blocks]
        with torch.no_grad():
            m(ids)
        for h in handles:
            h.remove()
        return seen

    pruned, reference = outputs(model), outputs(dense)
    return sum(float((p - r).square().sum()) for p, r in zip(pruned, reference)) / sum(float(r.square().sum()) for r in reference)


@pytest.mark.parametrize(
    "model_type, overrides", [("llama", {"attention_bias": True, "mlp_bias": True}), ("gpt_neox", {})]
)
def test_flap_bias_compensation_lowers_the_reconstruction_error(model_type, overrides, tokenizer):
    # One block, and output projections that have a bias already: both runs see the same calibration inputs and
    # spend the same parameter budget, so they remove the same structures.
    dense = model_of(model_type, num_hidden_layers=1, **overrides)
    with_bias = prune(model_of(model_type, num_hidden_layers=1, **overrides), tokenizer, "flap", "channels", 0.3)
    without = prune(
        model_of(model_type, num_hidden_layers=1, **overrides), tokenizer, "flap", "channels", 0.3,
        method_options={"bias_compensation": False},
    )
    assert with_bias.pruning_report.structure["removed"] == without.pruning_report.structure["removed"]
    assert with_bias.pruning_report.structure["bias_compensation"]
    assert block_output_error(with_bias, dense, tokenizer) < block_output_error(without, dense, tokenizer)


def test_gqa_groups_go_whole_with_their_query_heads(tokenizer):
    original = model_of("llama", num_attention_heads=8, num_key_value_heads=4, head_dim=4)
    model = prune(model_of("llama", num_attention_heads=8, num_key_value_heads=4, head_dim=4), tokenizer, "wanda", "channels", 0.3)
    groups = model.pruning_report.structure["groups_per_block"]
    assert groups >= 1
    assert model.config.num_key_value_heads == 4 - groups
    assert model.config.num_attention_heads == 2 * (4 - groups)
    blocks, originals = find_decoder_layout(model).blocks, find_decoder_layout(original).blocks
    for index, (block, old) in enumerate(zip(blocks, originals)):
        removed = model.pruning_report.structure["removed"][f"model.layers.{index}"]
        assert removed["heads"] == [2 * g + h for g in removed["kv_groups"] for h in range(2)]
        kept = [g for g in range(4) if g not in removed["kv_groups"]]
        kv_rows = [r for g in kept for r in range(4 * g, 4 * g + 4)]
        q_rows = [r for g in kept for r in range(8 * g, 8 * g + 8)]
        attention, old_attention = block.self_attn, old.self_attn
        assert torch.equal(attention.k_proj.weight, old_attention.k_proj.weight[kv_rows])
        assert torch.equal(attention.v_proj.weight, old_attention.v_proj.weight[kv_rows])
        assert torch.equal(attention.q_proj.weight, old_attention.q_proj.weight[q_rows])
        assert torch.equal(attention.o_proj.weight, old_attention.o_proj.weight[:, q_rows])


def test_block_removal_keeps_layer_types_and_cache_indices(tokenizer):
    types = ["sliding_attention", "full_attention", "full_attention", "sliding_attention", "full_attention"]
    original = model_of("gemma2", num_hidden_layers=5, layer_types=types)
    model = prune(model_of("gemma2", num_hidden_layers=5, layer_types=types), tokenizer, "block-influence", "blocks", 0.4)
    names = model.pruning_report.structure["removed_blocks"]
    removed = [int(name.rsplit(".", 1)[1]) for name in names]
    assert len(removed) == 2
    kept = [i for i in range(5) if i not in removed]
    assert model.config.num_hidden_layers == 3
    assert model.config.layer_types == [types[i] for i in kept]
    for position, (index, block) in enumerate(zip(kept, model.model.layers)):
        assert block.self_attn.layer_idx == position
        assert block.self_attn.sliding_window == (8 if types[index] == "sliding_attention" else None)
        assert torch.equal(block.mlp.down_proj.weight, original.model.layers[index].mlp.down_proj.weight)


def test_block_influence_and_greedy_loss_scores_are_recorded(tokenizer):
    model = prune(model_of("llama"), tokenizer, "block-perplexity", "blocks", 0.5, method_options={"eval_samples": 2})
    structure = model.pruning_report.structure
    assert len(structure["greedy_losses"]) == 2  # two rounds
    first, second = structure["greedy_losses"]
    chosen = min(first, key=first.get)
    assert chosen in structure["removed_blocks"] and chosen not in second
    influence = prune(model_of("llama"), tokenizer, "block-influence", "blocks", 0.25).pruning_report.structure
    scores = influence["block_influence"]
    assert influence["removed_blocks"] == [min(scores, key=scores.get)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="wanda", pattern="channels", refine="dsnot"), "removes whole structures"),
        (dict(method="block-influence", pattern="blocks", allocation="owl"), "allocation='owl'"),
        (dict(method="flap", pattern="unstructured"), "does not prune `pattern='unstructured'`"),
        (dict(method="sparsegpt", pattern="channels"), "use method 'magnitude' or 'wanda' or 'flap'"),
        (dict(method="wanda", pattern="blocks"), "block-influence"),
    ],
)
def test_bad_combinations_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**kwargs)


@pytest.mark.parametrize(
    "method, pattern, sparsity, message",
    [("flap", "channels", 0.9, "every attention head"), ("block-influence", "blocks", 0.95, "all 4 decoder blocks")],
)
def test_a_sparsity_that_removes_everything_fails_before_calibration(method, pattern, sparsity, message):
    model = model_of("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # No tokenizer: reaching the calibration step would fail with another error.
    with pytest.raises(ConfigError, match=message):
        CalibratedPruner(config_of(method, pattern, sparsity), tokenizer=None, progress=False).prune(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_cli_prunes_channels_with_flap(tiny_checkpoint, calibration_file, tmp_path):
    output = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "hf_calibprune", "prune", "--model", str(tiny_checkpoint), "--method", "flap",
         "--pattern", "channels", "--sparsity", "0.25", "--calibration", str(calibration_file), "--num-samples", "4",
         "--seq-len", "32", "--output", str(output)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((output / "config.json").read_text())
    assert config["num_key_value_heads"] == 1 and config["num_attention_heads"] == 2 and config["head_dim"] == 8
    assert config["attention_bias"] is True and config["mlp_bias"] is True  # FLAP's compensation biases
    report = json.loads((output / "pruning_report.json").read_text())
    assert report["structure"]["parameters_after"] < report["structure"]["parameters_before"]
    card = (output / "README.md").read_text()
    assert "decoder parameters" in card


def test_lora_recovery_of_a_structured_checkpoint_adapts_every_decoder_linear(tokenizer, tmp_path):
    from safetensors.torch import load_file

    from hf_calibprune.recovery.checkpoint import recover_checkpoint

    model = prune(model_of("llama"), tokenizer, "flap", "channels", 0.25)
    save_sparse(model, tmp_path / "pruned", tokenizer=tokenizer)
    record = recover_checkpoint(
        tmp_path / "pruned", TEXTS, tmp_path / "recovered", steps=2, lora=True, seq_len=32, batch_size=2,
        learning_rate=1e-2,
    )
    assert record.adapter == "lora"
    before, after = load_file(tmp_path / "pruned" / "model.safetensors"), load_file(tmp_path / "recovered" / "model.safetensors")
    assert before.keys() == after.keys()
    linears = [k for k in before if ".layers." in k and k.endswith("proj.weight")]
    assert linears and all(before[k].shape == after[k].shape for k in before)
    assert all(not torch.equal(before[k], after[k]) for k in linears)  # no mask held any of them back
    assert json.loads((tmp_path / "recovered" / "config.json").read_text())["intermediate_size"] == model.config.intermediate_size


def test_removing_inner_blocks_renumbers_cache_slots_so_cached_generation_matches_uncached():
    from hf_calibprune.models.surgery import remove_blocks

    types = ["sliding_attention", "full_attention", "full_attention", "sliding_attention", "full_attention"]
    model = model_of("gemma2", num_hidden_layers=5, layer_types=types)
    remove_blocks(model, find_decoder_layout(model), [0, 2])
    assert model.config.num_hidden_layers == 3 and model.config.layer_types == [types[i] for i in (1, 3, 4)]
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1, 2]
    prompt = IDS[:, :12]
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    "args",
    [
        # Batches of 3 over 7 samples: the first 6 are the greedy loss's (4 rounded up to whole batches); the
        # second process holds samples 4-6, so it reads 2 rows of its only batch.
        ["--method", "block-perplexity", "--pattern", "blocks", "--method-option", "eval_samples=4",
         "--batch-size", "3"],
        pytest.param(["--method", "block-influence", "--pattern", "blocks"], marks=pytest.mark.slow),
        pytest.param(["--method", "flap", "--pattern", "channels", "--sparsity", "0.25"], marks=pytest.mark.slow),
    ],
    ids=["greedy-loss", "block-influence", "flap"],
)
def test_two_processes_remove_what_one_process_removes(calibration_file, tmp_path, args):
    from safetensors.torch import load_file
    from test_distributed import _launch, _prune_args, _torchrun

    from hf_calibprune.cli import main as cli_main

    checkpoint = tmp_path / "tiny"
    model_of("llama").save_pretrained(checkpoint)
    make_tokenizer().save_pretrained(checkpoint)
    assert cli_main(_prune_args(checkpoint, calibration_file, tmp_path / "single", *args)) == 0
    _launch(_torchrun(2), _prune_args(checkpoint, calibration_file, tmp_path / "sharded", *args))
    single, sharded = (json.loads((tmp_path / run / "pruning_report.json").read_text())["structure"]
                       for run in ("single", "sharded"))
    for key in ("removed_blocks", "removed"):
        assert sharded.get(key) == single.get(key)
    for name, score in single.get("block_influence", {}).items():
        assert sharded["block_influence"][name] == pytest.approx(score, rel=1e-4)
    for got, want in zip(sharded.get("greedy_losses", []), single.get("greedy_losses", []), strict=True):
        assert got == pytest.approx(want, rel=1e-4)
    got, want = load_file(tmp_path / "sharded" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"weights of {key} differ")


@pytest.mark.parametrize("model_type, method", [("llama", "flap"), ("phi3", "wanda")])
def test_an_interrupted_channel_prune_resumes_bit_identical(tokenizer, tmp_path, model_type, method):
    """FLAP on Llama adds compensation biases the model did not have; Phi-3's qkv and gate/up are fused."""
    from test_resume import Interrupted, interrupt_at, manifest

    reference = prune(model_of(model_type), tokenizer, method, "channels", 0.25)
    first = model_of(model_type)
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        CalibratedPruner(config_of(method, "channels", 0.25), tokenizer=tokenizer, progress=False,
                         checkpoint_dir=tmp_path).prune(first)
    assert manifest(tmp_path)["completed_blocks"] == 2

    second = model_of(model_type)
    calls = []
    second.model.layers[1].mlp.register_forward_hook(lambda *_: calls.append(1))
    resumed = CalibratedPruner(config_of(method, "channels", 0.25), tokenizer=tokenizer, progress=False,
                               checkpoint_dir=tmp_path).prune(second)
    assert not calls, "a finished block was scored again"
    assert resumed.pruning_report.structure["removed"] == reference.pruning_report.structure["removed"]
    assert resumed.config.to_dict() == reference.config.to_dict()
    want, got = reference.state_dict(), resumed.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"
    assert manifest(tmp_path)["completed_blocks"] == 4


@pytest.mark.parametrize("method, pattern, sparsity", [("flap", "channels", 0.25), ("block-influence", "blocks", 0.5)])
def test_blocks_under_device_map_hooks_prune_like_in_memory(tokenizer, method, pattern, sparsity):
    """The hooks a device map across GPUs attaches to each block (activations moved, weights kept in place), here
    all on the CPU: the walk runs through them and the surgery changes shapes under them."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    expected = prune(model_of("llama"), tokenizer, method, pattern, sparsity)
    model = model_of("llama")
    for block in model.model.layers:
        add_hook_to_module(block, AlignDevicesHook(execution_device=torch.device("cpu"), io_same_device=True))
    pruned = prune(model, tokenizer, method, pattern, sparsity)
    assert pruned.config.to_dict() == expected.config.to_dict()
    want, got = expected.state_dict(), pruned.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the in-memory prune"
    assert all(hasattr(block, "_hf_hook") for block in pruned.model.layers)
    torch.testing.assert_close(pruned(IDS).logits, expected(IDS).logits, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["block-influence", "block-perplexity"])
def test_an_interrupted_depth_prune_resumes_with_the_same_choices(tokenizer, tmp_path, method):
    """Block influence saves each block's term with the next block's inputs; the greedy method saves each round
    (three rounds here, the run killed in the third, so two are replayed)."""
    from test_resume import Interrupted, manifest

    from hf_calibprune.engine.checkpointing import MANIFEST_NAME

    options = {"method_options": {"eval_samples": 2}} if method == "block-perplexity" else {}
    six = dict(num_hidden_layers=6)
    reference = prune(model_of("llama", **six), tokenizer, method, "blocks", 0.5, **options)
    first = model_of("llama", **six)

    def crash(*_):
        if (tmp_path / MANIFEST_NAME).is_file() and manifest(tmp_path)["completed_blocks"] >= 2:
            raise Interrupted

    first.model.layers[2].register_forward_pre_hook(crash)
    with pytest.raises(Interrupted):
        CalibratedPruner(config_of(method, "blocks", 0.5, **options), tokenizer=tokenizer, progress=False,
                         checkpoint_dir=tmp_path).prune(first)
    assert manifest(tmp_path)["completed_blocks"] == 2

    second = model_of("llama", **six)
    calls = []
    second.model.layers[1].register_forward_hook(lambda *_: calls.append(1))
    resumed = CalibratedPruner(config_of(method, "blocks", 0.5, **options), tokenizer=tokenizer, progress=False,
                               checkpoint_dir=tmp_path).prune(second)
    if method == "block-influence":
        assert not calls, "a measured block ran again"
    structure, expected = resumed.pruning_report.structure, reference.pruning_report.structure
    assert structure["removed_blocks"] == expected["removed_blocks"]
    for key in ("block_influence", "greedy_losses"):
        assert structure.get(key) == expected.get(key)
    want, got = reference.state_dict(), resumed.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def _block_values(model) -> dict[str, torch.Tensor]:
    """Every decoder-block parameter by name, read from wherever it lives (an offload map included)."""
    from hf_calibprune.engine.offload import read_parameter

    values = {}
    for index, block in enumerate(find_decoder_layout(model).blocks):
        for name, _ in block.named_parameters():
            path, _, leaf = name.rpartition(".")
            owner = block.get_submodule(path) if path else block
            values[f"{index}.{name}"] = read_parameter(owner, leaf, root=block, name=path).clone()
    return values


@pytest.mark.parametrize("offload", ["cpu_offload", "disk"])
@pytest.mark.parametrize(
    "method, pattern, sparsity, biases",
    [("flap", "channels", 0.25, False), ("flap", "channels", 0.25, True), ("block-influence", "blocks", 0.5, False)],
    ids=["flap-new-biases", "flap-existing-biases", "block-influence"],
)
def test_offloaded_weights_are_cut_like_in_memory(tokenizer, tmp_path, offload, method, pattern, sparsity, biases):
    """FLAP adds compensation biases the model did not have (they go into the offload map beside the weights), or
    changes the ones it had in place."""
    from accelerate import cpu_offload, dispatch_model

    overrides = {"attention_bias": True, "mlp_bias": True} if biases else {}
    expected = prune(model_of("llama", **overrides), tokenizer, method, pattern, sparsity)
    model = model_of("llama", **overrides)
    if offload == "cpu_offload":
        cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        device_map.update({f"model.layers.{i}": kind for i, kind in enumerate(["disk", "cpu", "disk", "disk"])})
        dispatch_model(model, device_map, main_device=torch.device("cpu"), offload_dir=tmp_path / "offload")
    pruned = prune(model, tokenizer, method, pattern, sparsity)
    assert pruned.config.to_dict() == expected.config.to_dict()
    want, got = _block_values(expected), _block_values(pruned)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{key} differs from the in-memory prune")
    torch.testing.assert_close(pruned(IDS).logits, expected(IDS).logits, rtol=1e-5, atol=1e-6)
    if offload == "disk":  # transformers saves a dispatched model through its offload maps (not a cpu_offload one)
        from transformers import AutoModelForCausalLM

        save_sparse(pruned, tmp_path / "saved", tokenizer=tokenizer)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
        torch.testing.assert_close(reloaded(IDS).logits, expected(IDS).logits, rtol=0, atol=0)


def test_an_interrupted_channel_prune_of_an_offloaded_model_resumes_like_in_memory(tokenizer, tmp_path):
    """FLAP's new compensation biases live in the offload map: the checkpoint reads them there and a rerun puts
    them back there."""
    from accelerate import cpu_offload
    from test_resume import Interrupted, interrupt_at, manifest

    reference = prune(model_of("llama"), tokenizer, "flap", "channels", 0.25)
    first = cpu_offload(model_of("llama"), execution_device=torch.device("cpu"))
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        CalibratedPruner(config_of("flap", "channels", 0.25), tokenizer=tokenizer, progress=False,
                         checkpoint_dir=tmp_path).prune(first)
    assert manifest(tmp_path)["completed_blocks"] == 2
    second = cpu_offload(model_of("llama"), execution_device=torch.device("cpu"))
    resumed = CalibratedPruner(config_of("flap", "channels", 0.25), tokenizer=tokenizer, progress=False,
                               checkpoint_dir=tmp_path).prune(second)
    want, got = _block_values(reference), _block_values(resumed)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted in-memory run"
