"""Mixture-of-Experts models keep working with everything else: refinement, the one-block-at-a-time execution
device, accelerate offload to CPU RAM and disk, resume after a crash, several processes, compact checkpoints and
recovery fine-tuning. Fused experts are checked on tiny Mixtral (``[E, out, in]``, gate and up concatenated) and
gpt-oss (``[E, in, out]``, gate and up interleaved), every expert matrix of every block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model
from transformers import AutoModelForCausalLM

from conftest import TEXT, kill_once_a_block_is_saved, make_tokenizer, tiny_model
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.engine.checkpointing import MANIFEST_NAME
from hf_calibprune.engine.offload import locate_weight, read_parameter
from hf_calibprune.models import find_decoder_layout, find_fused_experts

REPO = Path(__file__).resolve().parents[1]
MOE = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2),
}
BLOCKS = 3


def moe_model(model_type: str, blocks: int = BLOCKS, seed: int = 0):
    return tiny_model(model_type, seed=seed, num_hidden_layers=blocks, **MOE[model_type])


def config(**overrides) -> PruningConfig:
    values = dict(method="wanda", sparsity=0.5, calibration=[TEXT], num_samples=4, seq_len=32, batch_size=2)
    return PruningConfig(**{**values, **overrides})


def prune(model, cfg: PruningConfig, **kwargs):
    return CalibratedPruner(cfg, tokenizer=make_tokenizer(), progress=False, **kwargs).prune(model)


def block_weights(model) -> dict[str, torch.Tensor]:
    """Every rank >= 2 parameter of every decoder block, read wherever accelerate keeps it."""
    weights = {}
    for index, block in enumerate(find_decoder_layout(model).blocks):
        for name, parameter in block.named_parameters():
            if parameter.dim() >= 2:
                owner, _, attribute = name.rpartition(".")
                module = block.get_submodule(owner) if owner else block
                weights[f"{index}.{name}"] = read_parameter(module, attribute, root=block, name=owner).detach().clone()
    return weights


def expert_sparsities(model, weights: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Measured sparsity of every expert matrix (each expert's gate, up and down) of every block."""
    weights = block_weights(model) if weights is None else weights
    found = {}
    for index, block in enumerate(find_decoder_layout(model).blocks):
        fused = find_fused_experts(block)
        assert fused, f"block {index} has no fused experts"
        for experts in fused:
            for matrix in experts.matrices():
                value = matrix.view(weights[f"{index}.{experts.name}.{matrix.parameter}"])
                found[f"{index}.{matrix.name}"] = 1.0 - int(torch.count_nonzero(value)) / value.numel()
    return found


def assert_every_expert_at(model, target: float, weights=None) -> None:
    sparsities = expert_sparsities(model, weights)
    # Mixtral: 4 experts x (gate, up, down); gpt-oss the same, gate and up interleaved.
    assert len(sparsities) == BLOCKS * 4 * 3 or len(sparsities) % 12 == 0
    off = {name: value for name, value in sparsities.items() if value != pytest.approx(target, abs=1e-9)}
    assert not off, f"expert matrices off target {target}: {off}"


def assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k].view(torch.uint8), expected[k].view(torch.uint8))]
    assert not different, f"weights differ: {different}"


@pytest.fixture(scope="module")
def reference():
    """Whole-model, in-memory prunes, by model type and config."""
    cache = {}

    def get(model_type: str, **overrides):
        key = (model_type, json.dumps(overrides, sort_keys=True))
        if key not in cache:
            cache[key] = prune(moe_model(model_type), config(**overrides))
        return cache[key]

    return get


# --------------------------------------------------------------------------------------------------
# Refinement and the one-block-at-a-time execution device
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", list(MOE))
@pytest.mark.parametrize("refine", ["dsnot", "swaps"])
def test_refinement_keeps_every_expert_at_its_target(model_type, refine, reference):
    plain = reference(model_type, method="sparsegpt")
    refined = prune(moe_model(model_type), config(method="sparsegpt", refine=refine))
    assert_every_expert_at(refined, 0.5)
    experts = [r for r in refined.pruning_report.layers if "experts" in r.name]
    assert len(experts) == BLOCKS * 12
    assert all("error_after_refine" in r.info for r in experts), "every expert matrix goes through the refiner"
    # The refiner moved some expert masks (it is not a no-op on experts).
    before, after = block_weights(plain), block_weights(refined)
    changed = [k for k in after if "experts" in k and not torch.equal(after[k] == 0, before[k] == 0)]
    assert changed, "refinement changed no expert mask"


@pytest.mark.parametrize("model_type", list(MOE))
@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
def test_execution_device_prunes_moe_like_in_place(model_type, schedule, reference):
    expected = reference(model_type, method="sparsegpt", schedule=schedule)
    onloaded = prune(moe_model(model_type), config(method="sparsegpt", schedule=schedule, execution_device="cpu"))
    assert_every_expert_at(onloaded, 0.5)
    assert_identical(block_weights(onloaded), block_weights(expected))


# --------------------------------------------------------------------------------------------------
# accelerate device maps: CPU and disk offload
# --------------------------------------------------------------------------------------------------
def _device_map(kinds: list[str]) -> dict[str, str]:
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": kind for i, kind in enumerate(kinds)})
    return device_map


@pytest.fixture(scope="module")
def saved_moe(tmp_path_factory) -> dict[str, Path]:
    paths = {}
    for model_type in MOE:
        path = tmp_path_factory.mktemp(model_type) / "model"
        moe_model(model_type).save_pretrained(path)
        make_tokenizer().save_pretrained(path)
        paths[model_type] = path
    return paths


@pytest.mark.parametrize("model_type", list(MOE))
@pytest.mark.parametrize("method, schedule", [("sparsegpt", "sequential"), ("wanda", "one-pass")])
def test_offloaded_experts_are_pruned_and_written_back(model_type, method, schedule, saved_moe, tmp_path):
    cfg = config(method=method, schedule=schedule)
    expected = prune(AutoModelForCausalLM.from_pretrained(saved_moe[model_type]), cfg)
    model = AutoModelForCausalLM.from_pretrained(
        saved_moe[model_type], device_map=_device_map(["disk", "cpu", "disk"]), offload_folder=tmp_path / "offload"
    )
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.device.type == "meta"
    assert locate_weight(experts, name="", parameter="gate_up_proj").storage == "disk"
    prune(model, cfg)

    weights = block_weights(model)
    assert_every_expert_at(model, 0.5, weights)
    assert_identical(weights, block_weights(expected))
    # The hooks read the offloaded copies on every forward: the model computes with the pruned experts.
    ids = torch.randint(4, 99, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=0, atol=0)
    assert model.pruning_report.overall_sparsity == expected.pruning_report.overall_sparsity


@pytest.mark.parametrize("model_type", list(MOE))
def test_dispatch_model_with_cpu_and_disk_offload_maps(model_type, saved_moe, tmp_path):
    cfg = config(method="sparsegpt")
    expected = prune(AutoModelForCausalLM.from_pretrained(saved_moe[model_type]), cfg)
    model = AutoModelForCausalLM.from_pretrained(saved_moe[model_type])
    dispatch_model(model, _device_map(["cpu", "disk", "cpu"]), main_device=torch.device("cpu"),
                   offload_dir=tmp_path / "offload")
    storages = [locate_weight(b.mlp.experts, name="", parameter="down_proj").storage for b in model.model.layers]
    assert storages == ["cpu", "disk", "cpu"]
    prune(model, cfg)
    weights = block_weights(model)
    assert_every_expert_at(model, 0.5, weights)
    assert_identical(weights, block_weights(expected))


# --------------------------------------------------------------------------------------------------
# Resume after a crash
# --------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """Stands for a crash in the middle of the model."""


def _interrupt_at(model, block: int, directory: Path):
    def crash(module, args):
        if (directory / MANIFEST_NAME).is_file():
            raise Interrupted(f"crash in block {block}")

    return model.model.layers[block].register_forward_pre_hook(crash)


@pytest.mark.parametrize("model_type", list(MOE))
@pytest.mark.parametrize("overrides", [dict(method="sparsegpt"), dict(method="wanda", schedule="one-pass")],
                         ids=["sparsegpt", "wanda-one-pass"])
def test_interrupted_moe_run_resumes_bit_identical(model_type, overrides, reference, tmp_path):
    cfg = config(**overrides)
    first = moe_model(model_type)
    _interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        prune(first, cfg, checkpoint_dir=tmp_path)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["completed_blocks"] == 2

    second = moe_model(model_type)
    calls = [0]
    second.model.layers[1].mlp.experts.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    resumed = prune(second, cfg, checkpoint_dir=tmp_path)
    assert calls[0] == 0, "a finished block ran again"
    expected = reference(model_type, **overrides)
    assert_identical(block_weights(resumed), block_weights(expected))
    assert_every_expert_at(resumed, 0.5)
    report, want = resumed.pruning_report, expected.pruning_report
    assert [r.name for r in report.layers] == [r.name for r in want.layers]
    assert report.experts == want.experts, "tokens per expert survive the resume"
    assert report.overall_sparsity == want.overall_sparsity


@pytest.mark.slow
def test_cli_killed_with_sigkill_resumes_an_moe_model_bit_identical(saved_moe, tmp_path):

    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "calib.txt").write_text(TEXT)

    def command(output: Path, resume: Path | None) -> list[str]:
        args = [sys.executable, "-m", "hf_calibprune", "prune", "--model", str(saved_moe["gpt_oss"]), "--method",
                "sparsegpt", "--calibration", str(tmp_path / "calib.txt"), "--num-samples", "4", "--seq-len", "32",
                "--batch-size", "2", "--no-progress", "--output", str(output)]
        return args + (["--resume-dir", str(resume)] if resume is not None else [])

    resume = tmp_path / "resume"
    plain = subprocess.run(command(tmp_path / "plain", None), env=env, capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr
    slow = {**env, "HF_CALIBPRUNE_TEST_BLOCK_DELAY": "30"}  # the kill lands while a finished block is committed
    victim = subprocess.Popen(command(tmp_path / "out", resume), env=slow, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    kill_once_a_block_is_saved(victim, resume, timeout=300)
    assert 1 <= json.loads((resume / MANIFEST_NAME).read_text())["completed_blocks"] < BLOCKS
    rerun = subprocess.run(command(tmp_path / "out", resume), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing at model.layers." in rerun.stderr
    got, want = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert_identical(got, want)


# --------------------------------------------------------------------------------------------------
# Two processes equal one
# --------------------------------------------------------------------------------------------------
def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0"]
    result = subprocess.run([*launcher, "-m", "hf_calibprune", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    model = AutoModelForCausalLM.from_pretrained(directory)
    return block_weights(model), json.loads((directory / "pruning_report.json").read_text())


@pytest.mark.parametrize(
    "model_type, method, schedule",
    [
        ("mixtral", "sparsegpt", "sequential"),
        ("gpt_oss", "wanda", "one-pass"),
        pytest.param("gpt_oss", "sparsegpt", "sequential", marks=pytest.mark.slow),
        pytest.param("mixtral", "wanda", "one-pass", marks=pytest.mark.slow),
    ],
)
def test_two_processes_prune_moe_like_one(model_type, method, schedule, saved_moe, tmp_path):
    from hf_calibprune.cli import main as cli_main

    model_dir = saved_moe[model_type]
    (tmp_path / "calib.txt").write_text(TEXT)

    def args(output: Path, min_tokens: int) -> list[str]:
        (tmp_path / "config.json").write_text(json.dumps({"min_expert_tokens": min_tokens}))
        return ["prune", "--model", str(model_dir), "--config", str(tmp_path / "config.json"), "--calibration",
                str(tmp_path / "calib.txt"), "--num-samples", "7", "--seq-len", "32", "--batch-size", "2",
                "--method", method, "--schedule", schedule, "--output", str(output), "--no-progress"]

    # A first run counts the tokens routed to each expert; the threshold then sits just above the fewest, so the
    # least-routed experts fall back to all-token statistics (summed over both processes' counts) and the rest not.
    assert cli_main(args(tmp_path / "probe", 1)) == 0
    _, probe = _load_checkpoint(tmp_path / "probe")
    counts = sorted({n for summary in probe["experts"].values() for n in summary["tokens"]})
    assert len(counts) > 1, "every expert got the same number of tokens: no fallback can be tested"
    threshold = counts[0] + 1

    assert cli_main(args(tmp_path / "single", threshold)) == 0
    _torchrun(args(tmp_path / "sharded", threshold))
    single_weights, single = _load_checkpoint(tmp_path / "single")
    sharded_weights, sharded = _load_checkpoint(tmp_path / "sharded")

    sources = [s for summary in single["experts"].values() for s in summary["statistics"]]
    assert "all" in sources and "routed" in sources
    assert sharded["experts"] == single["experts"], "routed tokens and fallbacks are counted over both processes"
    assert single_weights.keys() == sharded_weights.keys()
    for key in single_weights:
        assert torch.equal(sharded_weights[key] == 0, single_weights[key] == 0), f"mask of {key} differs"
        torch.testing.assert_close(sharded_weights[key], single_weights[key], rtol=1e-4, atol=1e-5)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    assert_every_expert_at(model, 0.5)


# --------------------------------------------------------------------------------------------------
# Compact checkpoints
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", list(MOE))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_compact_checkpoint_stores_experts_compact_and_reloads_bit_identical(model_type, pattern, tmp_path):
    from safetensors import safe_open

    from hf_calibprune import save_sparse
    from hf_calibprune.hub import compact

    pruned = prune(moe_model(model_type), config(pattern=pattern))
    save_sparse(pruned, tmp_path / "compact", format="compact")
    save_sparse(pruned, tmp_path / "dense", format="dense")
    with safe_open(str(tmp_path / "dense" / "model.safetensors"), "pt") as handle:
        dense_keys = set(handle.keys())
    with safe_open(str(tmp_path / "compact" / "model.safetensors"), "pt") as handle:
        compact_keys = set(handle.keys())
    # Mixtral saves its experts split per expert (experts.0.w1.weight), gpt-oss keeps them fused (3-D): every
    # saved tensor of every expert is stored compact, never dense.
    expert_keys = {key for key in dense_keys if ".experts." in key and not key.endswith("bias")}
    assert len(expert_keys) == (BLOCKS * 4 * 3 if model_type == "mixtral" else BLOCKS * 2)
    for key in expert_keys:
        assert key not in compact_keys and key + compact.SHAPE in compact_keys, f"{key} is not stored compact"

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compact")
    expected, actual = pruned.state_dict(), reloaded.state_dict()
    assert_identical({k: actual[k] for k in expected}, expected)
    assert_every_expert_at(reloaded, 0.5)


# --------------------------------------------------------------------------------------------------
# Recovery fine-tuning keeps every expert's zeros
# --------------------------------------------------------------------------------------------------
def _expert_parameters(model) -> list[str]:
    layout = find_decoder_layout(model)
    return [
        f"{layout.block_name(i)}.{fused.name}.{parameter}"
        for i, block in enumerate(layout.blocks)
        for fused in find_fused_experts(block)
        for parameter in fused.parameters
    ]


@pytest.mark.parametrize("model_type", list(MOE))
def test_masks_cover_every_fused_expert_parameter(model_type, reference):
    from hf_calibprune.recovery import extract_masks

    pruned = reference(model_type, method="sparsegpt")
    masks = extract_masks(pruned)
    parameters = _expert_parameters(pruned)
    assert len(parameters) == BLOCKS * 2
    for name in parameters:
        weight = pruned.get_parameter(name)
        assert name in masks, f"no mask for {name}"
        assert masks[name].shape == weight.shape and torch.equal(masks[name], weight != 0)
    # Linear keys are unchanged; routers and expert biases (dense) get no mask.
    assert "model.layers.0.self_attn.q_proj" in masks
    assert not [name for name in masks if "router" in name or name.endswith((".gate", "bias"))]
    # A report that lists no expert matrix leaves the experts free.
    report = pruned.pruning_report.to_dict()
    report["layers"] = [layer for layer in report["layers"] if "experts" not in layer["name"]]
    assert not [name for name in extract_masks(pruned, report=report) if "experts" in name]
    assert set(extract_masks(pruned, [parameters[0]])) == {parameters[0]}


@pytest.mark.parametrize("model_type", list(MOE))
def test_recover_keeps_every_expert_zero_and_trains_the_kept_weights(model_type, reference):
    import copy

    from hf_calibprune.recovery import extract_masks, masks_sparsity, recover

    pruned = copy.deepcopy(reference(model_type, method="wanda"))
    masks = extract_masks(pruned)
    before = block_weights(pruned)
    recovered = recover(pruned, make_tokenizer(), [TEXT] * 4, steps=3, learning_rate=1e-2, seq_len=32,
                        batch_size=2, loss_blocks=2)
    after = block_weights(recovered)
    assert_every_expert_at(recovered, 0.5, after)
    experts = [key for key in before if ".experts." in key and not key.endswith("bias")]
    for key in experts:
        assert torch.equal(after[key] == 0, before[key] == 0), f"zeros of {key} moved"
        assert not torch.equal(after[key], before[key]), f"{key} did not train"
    record = recovered.recovery_record
    assert record.masked_weights == sum(int((~mask).sum()) for mask in masks.values())
    assert record.sparsity == masks_sparsity(masks)


@pytest.mark.parametrize("model_type", list(MOE))
def test_lora_recovery_adapts_every_fused_expert_and_keeps_its_zeros(model_type, reference):
    import copy

    from hf_calibprune.recovery import extract_masks, lora_config_for_masks, recover

    pruned = copy.deepcopy(reference(model_type, method="wanda"))
    masks = extract_masks(pruned)
    assert sorted(lora_config_for_masks(masks, pruned).target_parameters) == sorted(_expert_parameters(pruned))
    before = block_weights(pruned)
    recovered = recover(pruned, make_tokenizer(), [TEXT] * 4, steps=3, learning_rate=1e-2, seq_len=32,
                        batch_size=2, loss_blocks=2, lora=True)
    after = block_weights(recovered)
    assert_every_expert_at(recovered, 0.5, after)
    experts = [key for key in before if ".experts." in key and not key.endswith("bias")]
    assert len(experts) == BLOCKS * 2
    for key in experts:
        assert torch.equal(after[key] == 0, before[key] == 0), f"zeros of {key} moved"
        for expert in range(before[key].shape[0]):  # each expert got its own merged low-rank update
            assert not torch.equal(after[key][expert], before[key][expert]), f"{key}[{expert}] was not adapted"


@pytest.mark.parametrize("model_type", list(MOE))
def test_sparsity_keeper_masks_expert_gradients(model_type, reference):
    import copy

    from hf_calibprune.recovery import SparsityKeeper, extract_masks

    model = copy.deepcopy(reference(model_type, method="wanda")).train()
    masks = extract_masks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(4, 99, (2, 16), generator=torch.Generator().manual_seed(0))
    with SparsityKeeper(model, masks) as keeper:
        for _ in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            for name in _expert_parameters(model):
                grad = model.get_parameter(name).grad
                assert grad is not None and not bool(grad.masked_select(~masks[name]).any()), name
            optimizer.step()
            keeper.step()
            optimizer.zero_grad()
    assert keeper.check() == []


@pytest.mark.parametrize("model_type", list(MOE))
def test_recover_command_checks_the_written_expert_tensors(model_type, tmp_path):
    from hf_calibprune import save_sparse
    from hf_calibprune.integrations.transformers_plugin import checkpoint_keys
    from hf_calibprune.recovery import extract_masks
    from hf_calibprune.recovery.checkpoint import check_zeros_kept, recover_checkpoint
    from hf_calibprune.recovery.masks import masked_parameter_names
    from safetensors.torch import load_file, save_file

    pruned = prune(moe_model(model_type, blocks=2), config())
    save_sparse(pruned, tmp_path / "pruned", tokenizer=make_tokenizer())
    (tmp_path / "train.txt").write_text(TEXT)
    record = recover_checkpoint(tmp_path / "pruned", str(tmp_path / "train.txt"), tmp_path / "out", steps=2,
                                learning_rate=1e-2, seq_len=32, batch_size=2, loss_blocks=2)
    assert record.masked_weights > 0
    lost = check_zeros_kept(tmp_path / "pruned", tmp_path / "out")
    assert all(key.endswith("bias") for key in lost), lost  # gpt-oss biases start at zero and train freely
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    before = load_file(str(tmp_path / "pruned" / "model.safetensors"))
    experts = [key for key in before if ".experts." in key and not key.endswith("bias")]
    assert experts and all(torch.equal(out[k] == 0, before[k] == 0) for k in experts)
    # The check sees a lost expert zero in the file as transformers writes it (per expert for Mixtral), and counts
    # it as a masked weight's.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    masks = extract_masks(model, report=json.loads((tmp_path / "pruned" / "pruning_report.json").read_text()))
    assert set(experts) <= checkpoint_keys(model, masked_parameter_names(model, masks))
    damaged = dict(out)
    damaged[experts[0]] = out[experts[0]].masked_fill(out[experts[0]] == 0, 1.0)
    save_file(damaged, str(tmp_path / "out" / "model.safetensors"), metadata={"format": "pt"})
    assert set(check_zeros_kept(tmp_path / "pruned", tmp_path / "out")) - set(lost) == {experts[0]}
