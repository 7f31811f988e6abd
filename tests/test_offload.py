"""Pruning models dispatched by accelerate: blocks offloaded to CPU RAM and to disk prune exactly like in memory,
and the pruned weights survive the hooks, saving and reloading, without touching the user's checkpoint."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from transformers import AutoModelForCausalLM

from conftest import make_tokenizer, tiny_model
from hf_calibprune import CalibratedPruner, PruningConfig, save_sparse
from hf_calibprune.engine.offload import locate_weight, read_weight, write_weight
from hf_calibprune.errors import ConfigError
from hf_calibprune.models import find_decoder_layout, find_prunable_linears

LAYERS = 3


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_model("llama", num_hidden_layers=LAYERS).save_pretrained(path)
    return path


def _config(calibration_file, method="wanda", **overrides) -> PruningConfig:
    values = dict(method=method, sparsity=0.5, calibration=str(calibration_file), num_samples=6, seq_len=32,
                  batch_size=4)
    return PruningConfig(**{**values, **overrides})


def _device_map(kinds: list[str]) -> dict[str, str]:
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": kind for i, kind in enumerate(kinds)})
    return device_map


def _weights(model) -> dict[str, torch.Tensor]:
    layout = find_decoder_layout(model)
    return {
        f"{i}.{name}": read_weight(module, root=block, name=name).clone()
        for i, block in enumerate(layout.blocks)
        for name, module in find_prunable_linears(block).items()
    }


def _pruned_in_memory(checkpoint, config) -> AutoModelForCausalLM:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    return CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)


def _assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], exact: bool = True) -> None:
    """The same masks; the same weights, bit for bit unless ``exact`` is off (then to float rounding)."""
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key] == 0, expected[key] == 0), f"mask of {key} differs"
        if exact:
            assert torch.equal(actual[key], expected[key]), f"weights of {key} differ"
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"weights of {key} differ")


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    ("method", "schedule", "extra"),
    [
        ("sparsegpt", "sequential", {}),
        pytest.param("sparsegpt", "one-pass", {}, marks=pytest.mark.slow),
        ("wanda", "sequential", {"pattern": "2:4", "reconstruct": "admm"}),
    ],
)
def test_disk_and_cpu_offloaded_blocks_prune_like_in_memory(checkpoint, calibration_file, tmp_path, method, schedule, extra):
    config = _config(calibration_file, method, schedule=schedule, **extra)
    expected = _pruned_in_memory(checkpoint, config)
    before = _hashes(checkpoint)

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=_device_map(["disk", "cpu", "disk"]), offload_folder=tmp_path / "offload"
    )
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.device.type == "meta"
    assert locate_weight(q_proj).storage == "disk"
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)

    # One-pass runs offloaded blocks as one batch (accelerate's hooks move weights away after each call, so
    # micro-batches cannot meet before a Linear) and in-memory ones as micro-batches: SparseGPT's Gram sums then
    # differ in float rounding, its masks not.
    exact = schedule == "sequential"
    _assert_identical(_weights(model), _weights(expected), exact)
    assert _hashes(checkpoint) == before, "the user's checkpoint must never be rewritten"
    # The hooks re-read offloaded weights on every forward: the model must compute with the pruned ones.
    ids = torch.randint(4, 99, (2, 16), generator=torch.Generator().manual_seed(1))
    tolerance = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(_logits(model, ids), _logits(expected, ids), **tolerance)
    report = model.pruning_report.to_dict()
    assert report["layers"] and abs(report["overall_sparsity"] - 0.5) < 0.01


def test_block_reconstruction_of_offloaded_blocks_fails_before_pruning(checkpoint, calibration_file, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=_device_map(["cpu", "cpu", "disk"]), offload_folder=tmp_path / "offload"
    )
    before = _weights(model)
    config = _config(calibration_file, pattern="2:4", reconstruct="block")
    with pytest.raises(ConfigError, match="reconstruct='block' trains each block's kept weights in memory"):
        CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    _assert_identical(_weights(model), before)


def test_pruned_offloaded_weights_survive_save_and_reload(checkpoint, calibration_file, tmp_path):
    config = _config(calibration_file, "wanda")
    reference = _pruned_in_memory(checkpoint, config)
    expected = _weights(reference)
    before = _hashes(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=_device_map(["disk", "cpu", "disk"]), offload_folder=tmp_path / "offload"
    )
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    ids = torch.randint(4, 99, (2, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), rtol=0, atol=0)

    save_sparse(model, tmp_path / "sparse", format="dense")
    model.save_pretrained(tmp_path / "plain")
    for saved in ("sparse", "plain"):
        _assert_identical(_weights(AutoModelForCausalLM.from_pretrained(tmp_path / saved)), expected)
    assert _hashes(checkpoint) == before


@pytest.mark.parametrize("preload", [None, ["LlamaDecoderLayer"]])
def test_cpu_offload_state_dict_is_written_through(checkpoint, calibration_file, preload):
    # accelerate.cpu_offload keeps one CPU copy of every weight in the hooks' weights_map and nothing in the
    # parameters: writing only the parameter would be lost at the next forward. With preload_module_classes
    # the hook (and the weight's key) sits on the decoder block, not on the Linear.
    config = _config(calibration_file, "sparsegpt")
    expected = _pruned_in_memory(checkpoint, config)
    model = cpu_offload(AutoModelForCausalLM.from_pretrained(checkpoint), execution_device="cpu",
                        preload_module_classes=preload)
    block = model.model.layers[1]
    location = locate_weight(block.mlp.down_proj, root=block, name="mlp.down_proj")
    assert location.storage == "cpu" and location.key.endswith("layers.1.mlp.down_proj.weight")
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    _assert_identical(_weights(model), _weights(expected))
    ids = torch.randint(4, 99, (2, 16), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_logits(model, ids), _logits(expected, ids), rtol=0, atol=0)


def test_dispatch_model_with_cpu_and_disk_offload_maps(checkpoint, calibration_file, tmp_path):
    # The layout a GPU main device gives: "cpu" blocks in the loader's state dict, "disk" blocks in its index.
    config = _config(calibration_file, "wanda", allocation="owl", owl_lambda=0.05)
    expected = _pruned_in_memory(checkpoint, config)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    dispatch_model(model, _device_map(["cpu", "disk", "cpu"]), main_device=torch.device("cpu"),
                   offload_dir=tmp_path / "offload")
    assert [locate_weight(b.mlp.up_proj).storage for b in model.model.layers] == ["cpu", "disk", "cpu"]
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    _assert_identical(_weights(model), _weights(expected))
    assert model.pruning_report.to_dict()["layer_sparsity"] == expected.pruning_report.to_dict()["layer_sparsity"]


def test_write_weight_never_touches_the_file_the_index_pointed_at(checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=_device_map(["disk", "cpu", "cpu"]), offload_folder=tmp_path / "offload"
    )
    module = model.model.layers[0].mlp.gate_proj
    location = locate_weight(module)
    original_file = Path(location.mapping.index[location.key]["safetensors_file"])
    before = hashlib.sha256(original_file.read_bytes()).hexdigest()
    dense = read_weight(module).clone()
    pruned = dense.masked_fill(dense.abs() < dense.abs().median(), 0.0)
    write_weight(module, pruned)
    assert torch.equal(read_weight(module), pruned)
    assert hashlib.sha256(original_file.read_bytes()).hexdigest() == before
    new_file = Path(location.mapping.index[location.key]["safetensors_file"])
    assert new_file != original_file and new_file.is_relative_to(tmp_path / "offload")


def test_conv1d_offloaded_weights_are_read_and_written_as_out_by_in(tmp_path):
    model = tiny_model("gpt2")
    cpu_offload(model, execution_device="cpu")
    attention = model.transformer.h[0].attn.c_attn  # Conv1D stores [in, out] = [32, 96]
    weight = read_weight(attention)
    assert tuple(weight.shape) == (96, 32)
    write_weight(attention, torch.zeros_like(weight).index_fill_(0, torch.tensor([5]), 1.0))
    stored = locate_weight(attention)
    assert tuple(stored.mapping[stored.key].shape) == (32, 96)
    assert float(stored.mapping[stored.key][:, 5].sum()) == 32.0


def test_execution_device_is_validated():
    from hf_calibprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"execution_device=.gpu0.` is not a torch device"):
        PruningConfig(execution_device="gpu0")


def test_execution_device_on_the_same_device_changes_nothing(checkpoint, calibration_file):
    config = _config(calibration_file, "sparsegpt")
    expected = _pruned_in_memory(checkpoint, config)
    onloaded = _pruned_in_memory(checkpoint, _config(calibration_file, "sparsegpt", execution_device="cpu"))
    _assert_identical(_weights(onloaded), _weights(expected))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_block_at_a_time_on_the_gpu(checkpoint, calibration_file):
    config = _config(calibration_file, "wanda", execution_device="cuda")
    expected = _weights(_pruned_in_memory(checkpoint, _config(calibration_file, "wanda")))
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    block_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    # cuBLAS and attention kernels keep workspaces in PyTorch's allocator once first used: run the model once
    # on the GPU so they exist, and count only what pruning adds on top of them.
    AutoModelForCausalLM.from_pretrained(checkpoint).cuda()(torch.ones(4, 32, dtype=torch.long, device="cuda"))
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)
    assert all(p.device.type == "cpu" for p in model.parameters()), "blocks must go back where they were"
    actual = _weights(model)
    agreement = sum(int(((actual[k] == 0) == (expected[k] == 0)).sum()) for k in expected)
    assert agreement / sum(v.numel() for v in expected.values()) > 0.99
    added = torch.cuda.max_memory_allocated() - baseline
    assert added < 4 * block_bytes + 2**20, f"pruning added {added} bytes of GPU memory; one block is {block_bytes}"


def test_cli_prunes_a_disk_offloaded_model(checkpoint, calibration_file, tmp_path):
    from hf_calibprune.cli import main as cli_main

    make_tokenizer().save_pretrained(tmp_path / "model")
    model_dir = tmp_path / "model"
    for path in checkpoint.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    before = _hashes(model_dir)
    common = ["prune", "--model", str(model_dir), "--calibration", str(calibration_file), "--num-samples", "6",
              "--seq-len", "32", "--batch-size", "4", "--method", "wanda", "--no-progress"]
    assert cli_main([*common, "--output", str(tmp_path / "dense")]) == 0
    device_map = json.dumps(_device_map(["disk", "cpu", "disk"]))
    assert cli_main([*common, "--device-map", device_map, "--offload-folder", str(tmp_path / "offload"),
                     "--output", str(tmp_path / "offloaded")]) == 0
    _assert_identical(_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "offloaded")),
                      _weights(AutoModelForCausalLM.from_pretrained(tmp_path / "dense")))
    assert _hashes(model_dir) == before
