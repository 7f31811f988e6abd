"""pattern="experts": whole routed experts removed from every MoE block, chosen by scores recomputed here from the
routed inputs, router rows cut consistently, and a checkpoint that plain transformers loads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from conftest import MOE_OVERRIDES, TEXT, make_tokenizer, tiny_model, tiny_moe
from hf_calibprune import CalibratedPruner, ConfigError, PruningConfig, save_sparse
from hf_calibprune.calibration import build_calibration_samples
from hf_calibprune.cli import main as cli_main
from test_moe import _legacy_moe_model
from test_structured import IDS, reload_in_fresh_process

ARCHITECTURES = list(MOE_OVERRIDES)
COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
TEXTS = [f"Sample {i}. " + TEXT[i * 7 :] for i in range(12)]
SAMPLES = dict(num_samples=6, seq_len=32, seed=0)


def count_key(architecture: str) -> str:
    return next(key for key in MOE_OVERRIDES[architecture] if key in COUNT_KEYS)


def moe_model(architecture: str, experts: int = 6, **overrides):
    """A tiny MoE model with ``experts`` routed experts per block (top-2), whose router biases are random so that
    cutting them matters (gpt-oss's router bias, DeepSeek-V3's ``e_score_correction_bias``)."""
    model = tiny_moe(architecture, **{count_key(architecture): experts, **overrides})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mlp, _ in moe_modules(model):
            router = router_of(mlp)
            for name in ("bias", "e_score_correction_bias"):
                value = getattr(router, name, None)
                if isinstance(value, torch.Tensor):
                    value.copy_(torch.randn(value.shape, generator=generator) * 0.5)
    return model


def moe_modules(model):
    """(MoE module, block index) of every block that has routed experts, found by transformers' names."""
    return [(block.mlp, i) for i, block in enumerate(model.model.layers) if hasattr(block.mlp, "experts")]


def router_of(mlp):
    return getattr(mlp, "router", None) or mlp.gate


def config_of(method: str, sparsity: float, **extra) -> PruningConfig:
    return PruningConfig(method=method, pattern="experts", sparsity=sparsity, calibration=TEXTS, batch_size=2,
                         **SAMPLES, **extra)


def prune(model, tokenizer, method="reap", sparsity=0.5, **extra):
    return CalibratedPruner(config_of(method, sparsity, **extra), tokenizer=tokenizer, progress=False).prune(model)


def removed_of(model) -> dict[int, list[int]]:
    removed = model.pruning_report.structure["removed_experts"]
    return {int(name.split(".")[2]): experts for name, experts in removed.items()}


class MaskRouterLogits(TorchFunctionMode):
    """Sets the router logits of removed experts to -inf: every ``F.linear`` whose weight is a router's gets its
    output columns ``removed`` filled."""

    def __init__(self, removed: dict[int, list[int]]) -> None:
        super().__init__()
        self.removed = removed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func is F.linear and isinstance(args[1], torch.Tensor) and args[1].data_ptr() in self.removed:
            output = output.index_fill(-1, torch.tensor(self.removed[args[1].data_ptr()]), float("-inf"))
        return output


def masked_reference_logits(dense, removed: dict[int, list[int]], ids) -> torch.Tensor:
    """Logits of the dense model with the removed experts' router logits at -inf (and, for DeepSeek-V3, their
    correction bias too: its router picks by ``sigmoid(logit) + bias``, so a -inf logit alone can still win)."""
    reference = copy.deepcopy(dense)
    pointers = {}
    for mlp, index in moe_modules(reference):
        router = router_of(mlp)
        pointers[router.weight.data_ptr()] = removed[index]
        if hasattr(router, "e_score_correction_bias"):
            router.e_score_correction_bias[removed[index]] = float("-inf")
    with torch.no_grad(), MaskRouterLogits(pointers):
        return reference(ids).logits


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tokenizer) -> dict:
    """Every architecture pruned by REAP and by magnitude (3 of 6 experts per block), saved, reloaded at the end in
    one fresh process."""
    root = tmp_path_factory.mktemp("experts")
    results = {}
    for architecture in ARCHITECTURES:
        for method in ("reap", "magnitude"):
            dense = moe_model(architecture)
            model = prune(copy.deepcopy(dense), tokenizer, method)
            with torch.no_grad():
                logits = model(IDS).logits
            directory = root / f"{architecture}-{method}"
            save_sparse(model, directory, tokenizer=tokenizer)
            results[architecture, method] = dict(dense=dense, model=model, logits=logits, directory=directory)
    reloaded = reload_in_fresh_process([r["directory"] for r in results.values()])
    for result, loaded in zip(results.values(), reloaded):
        result["reloaded"] = loaded
    return results


def per_expert_parameters(mlp) -> int:
    """Parameters one routed expert holds with its router row, counted from transformers' modules."""
    experts, router = mlp.experts, router_of(mlp)
    count = experts.gate_up_proj.shape[0]
    own = sum(p.numel() for p in experts.parameters())
    rows = sum(p.numel() for p in router.parameters() if p.shape[0] == count)
    return (own + rows) // count


@pytest.mark.parametrize("method", ["reap", "magnitude"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_requested_number_of_experts_goes_from_every_block_with_their_parameters(pruned, architecture, method):
    result = pruned[architecture, method]
    dense, model = result["dense"], result["model"]
    moes = moe_modules(dense)
    expected = sum(p.numel() for p in dense.parameters()) - sum(3 * per_expert_parameters(mlp) for mlp, _ in moes)
    assert sum(p.numel() for p in model.parameters()) == expected
    structure = model.pruning_report.structure
    assert structure["model_parameters_after"] == expected
    assert (structure["experts_before"], structure["experts_after"]) == (6, 3)
    removed = removed_of(model)
    assert sorted(removed) == [index for _, index in moes]  # every MoE block, and only those
    summary = model.pruning_report.summary_table()
    assert "routed experts per MoE block: 6 -> 3" in summary
    assert all(f"model.layers.{i}.mlp: removed experts {removed[i]}" in summary for i in removed)
    for mlp, index in moe_modules(model):
        assert len(removed[index]) == 3
        assert mlp.experts.gate_up_proj.shape[0] == mlp.experts.down_proj.shape[0] == 3
        assert router_of(mlp).weight.shape[0] == 3
        assert mlp.experts.num_experts == router_of(mlp).num_experts == 3
    saved = json.loads((result["directory"] / "config.json").read_text())
    assert {saved[key] for key in COUNT_KEYS if key in saved} == {3}
    assert "quantization_config" not in saved


def _direct_reap_scores(probe, index, ids, mask) -> torch.Tensor:
    """REAP's score of every expert of block ``index`` of ``probe``, from its routed inputs: each routed token's
    ``g · ‖f_e(x)‖`` measured as the change of the experts' output when that token's slot is given weight 0."""
    experts = probe.model.layers[index].mlp.experts
    seen = {}

    def hook(module, args):
        seen["args"] = [a.detach().clone() for a in args[:3]]

    handle = experts.register_forward_pre_hook(hook)
    with torch.no_grad():
        probe(input_ids=ids, attention_mask=mask)
    handle.remove()
    hidden, routing, weights = seen["args"]
    num_experts = experts.gate_up_proj.shape[0]
    sums, counts = torch.zeros(num_experts, dtype=torch.float64), torch.zeros(num_experts)
    real = mask.reshape(-1).bool()
    with torch.no_grad():
        full = experts(hidden, routing, weights)
        for slot in range(routing.shape[1]):
            without = weights.clone()
            without[:, slot] = 0
            contribution = (full - experts(hidden, routing, without)).double().norm(dim=-1)
            chosen = routing[:, slot]
            sums.index_add_(0, chosen[real], contribution[real])
            counts.index_add_(0, chosen[real], torch.ones(int(real.sum())))
    return (sums / counts.clamp(min=1)).float()


def _direct_weight_norms(mlp) -> torch.Tensor:
    experts = mlp.experts
    squares = [getattr(experts, name).detach().square().sum(dim=(1, 2)) for name in ("gate_up_proj", "down_proj")]
    return (squares[0] + squares[1]).sqrt()


def _assert_lowest(scores: torch.Tensor, removed: list[int], name: str) -> None:
    kept = [e for e in range(scores.numel()) if e not in removed]
    assert float(scores[removed].max()) <= float(scores[kept].min()) * (1 + 1e-5), (name, scores.tolist(), removed)


@pytest.mark.parametrize("method", ["reap", "magnitude"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_removed_experts_are_the_lowest_scored_in_every_block(pruned, architecture, method, tokenizer):
    result = pruned[architecture, method]
    dense, model = result["dense"], result["model"]
    removed = removed_of(model)
    recorded = model.pruning_report.structure["expert_scores"]
    samples = build_calibration_samples(TEXTS, tokenizer, model=dense, **SAMPLES)
    for mlp, index in moe_modules(dense):
        if method == "magnitude":
            scores = _direct_weight_norms(mlp)
        else:
            # Block k is scored on the outputs of the already pruned blocks before it, as dense block k.
            probe = copy.deepcopy(model)
            probe.model.layers[index] = copy.deepcopy(dense.model.layers[index])
            scores = _direct_reap_scores(probe, index, samples.input_ids, samples.attention_mask)
        name = f"model.layers.{index}.mlp"
        assert torch.allclose(torch.tensor(recorded[name]), scores, rtol=1e-4, atol=1e-6), (name, recorded[name])
        _assert_lowest(scores, removed[index], name)
        kept = [e for e in range(6) if e not in removed[index]]
        pruned_experts = model.model.layers[index].mlp.experts
        assert torch.equal(pruned_experts.down_proj, mlp.experts.down_proj[kept])
        assert torch.equal(pruned_experts.gate_up_proj, mlp.experts.gate_up_proj[kept])


@pytest.mark.parametrize("method", ["reap", "magnitude"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_checkpoint_reloads_without_the_package_with_equal_logits(pruned, architecture, method):
    result = pruned[architecture, method]
    assert torch.allclose(result["reloaded"]["logits"], result["logits"], atol=1e-5, rtol=1e-4)
    assert 8 < result["reloaded"]["generated"].shape[1] <= 14  # it generates (an end-of-text token may stop it)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_pruned_logits_equal_the_dense_model_with_the_removed_experts_router_logits_at_minus_inf(pruned, architecture):
    # Softmax-then-top-k (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) and top-k-then-softmax (gpt-oss) routing over the
    # kept experts is exactly routing with the removed experts' logits at -inf. DeepSeek-V3 also needs their
    # correction bias at -inf (see masked_reference_logits). A router whose rows were not cut (or cut at the wrong
    # experts, or whose bias was not cut with them) gives other logits.
    result = pruned[architecture, "reap"]
    reference = masked_reference_logits(result["dense"], removed_of(result["model"]), IDS)
    assert torch.allclose(result["logits"], reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ["mixtral", "gpt_oss"])
def test_lora_recovery_of_an_experts_checkpoint_adapts_every_remaining_expert(pruned, architecture, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_calibprune.recovery.checkpoint import recover_checkpoint

    source = pruned[architecture, "reap"]["directory"]
    record = recover_checkpoint(source, TEXTS, tmp_path / "recovered", steps=4, lora=True, seq_len=32, batch_size=3,
                                learning_rate=1e-2)
    assert record.adapter == "lora"
    before = dict(AutoModelForCausalLM.from_pretrained(source).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "recovered").named_parameters())
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    experts = [k for k in before if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(experts) == 2 * len(moe_modules(pruned[architecture, "reap"]["model"]))
    for key in experts:
        assert before[key].shape[0] == 3  # 3 of 6 experts left in every block
        for expert in range(3):
            assert not torch.equal(before[key][expert], after[key][expert]), f"{key}[{expert}] was not adapted"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_removing_zero_experts_is_bit_identical(architecture, tokenizer):
    original = moe_model(architecture)
    model = prune(copy.deepcopy(original), tokenizer, "reap", 0.0)
    assert model.config.to_dict() == original.config.to_dict()
    state, reference = model.state_dict(), original.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[key], reference[key]) for key in reference)
    assert model.pruning_report.structure["removed_experts"] == {}


def test_group_limited_routing_loses_the_same_number_of_experts_from_each_group(tokenizer):
    overrides = dict(n_group=2, topk_group=1)
    dense = moe_model("deepseek_v3", experts=8, **overrides)
    model = prune(copy.deepcopy(dense), tokenizer, "reap", 0.25)
    removed = removed_of(model)
    assert sorted(removed) == [1, 2]
    for experts in removed.values():
        assert [e // 4 for e in experts] == [0, 1]  # one from each group of four
    assert (model.config.n_routed_experts, model.config.n_group, model.config.topk_group) == (6, 2, 1)
    assert torch.allclose(model(IDS).logits, masked_reference_logits(dense, removed, IDS), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="n_group"):
        prune(moe_model("deepseek_v3", experts=8, **overrides), None, "reap", 0.125)


def _legacy_reap_scores(probe, index, ids, mask) -> torch.Tensor:
    """REAP's scores of block ``index``'s ``_LegacySparseMoe`` from its routed inputs, by that module's own routing
    (softmax, top-2, renormalised)."""
    moe = probe.model.layers[index].mlp
    seen = {}
    handle = moe.register_forward_pre_hook(lambda module, args: seen.update(hidden=args[0].detach().clone()))
    with torch.no_grad():
        probe(input_ids=ids, attention_mask=mask)
    handle.remove()
    hidden = seen["hidden"].reshape(-1, seen["hidden"].shape[-1])[mask.reshape(-1).bool()]
    sums, counts = torch.zeros(4, dtype=torch.float64), torch.zeros(4)
    with torch.no_grad():
        gates, chosen = torch.topk(torch.softmax(moe.gate(hidden), dim=-1), 2, dim=-1)
        gates = gates / gates.sum(dim=-1, keepdim=True)
        for slot in range(2):
            for expert in range(4):
                rows = chosen[:, slot] == expert
                outputs = moe.experts[expert](hidden[rows])
                sums[expert] += float((gates[rows, slot] * outputs.norm(dim=-1)).sum())
                counts[expert] += int(rows.sum())
    return (sums / counts.clamp(min=1)).float()


@pytest.mark.parametrize("method", ["reap", "magnitude"])
def test_module_list_experts_are_scored_and_removed_in_every_block(method, tokenizer):
    dense = _legacy_moe_model()
    model = prune(copy.deepcopy(dense), tokenizer, method, 0.5)
    removed = removed_of(model)
    recorded = model.pruning_report.structure["expert_scores"]
    samples = build_calibration_samples(TEXTS, tokenizer, model=dense, **SAMPLES)
    ids = IDS[:, :12]
    pointers = {}
    for index, block in enumerate(dense.model.layers):
        if method == "magnitude":
            scores = torch.stack([
                sum(getattr(e, n).weight.detach().square().sum() for n in ("w1", "w2", "w3")).sqrt()
                for e in block.mlp.experts
            ])
        else:
            probe = copy.deepcopy(model)
            probe.model.layers[index] = copy.deepcopy(block)
            scores = _legacy_reap_scores(probe, index, samples.input_ids, samples.attention_mask)
        name = f"model.layers.{index}.mlp"
        assert torch.allclose(torch.tensor(recorded[name]), scores, rtol=1e-4, atol=1e-6), (name, recorded[name])
        _assert_lowest(scores, removed[index], name)
        pointers[block.mlp.gate.weight.data_ptr()] = removed[index]
        assert len(model.model.layers[index].mlp.experts) == 2
        assert model.model.layers[index].mlp.gate.weight.shape == (2, 32)
    with torch.no_grad(), MaskRouterLogits(pointers):
        reference = dense(ids).logits
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "model, sparsity, message",
    [
        (lambda: tiny_model("llama"), 0.5, "has none"),
        (lambda: tiny_moe("mixtral"), 0.9, "remove all 4 experts"),
        (lambda: tiny_moe("mixtral"), 0.7, "fewer than the 2 each token is routed to"),
    ],
)
def test_a_model_or_sparsity_that_cannot_lose_experts_fails_before_calibration(model, sparsity, message):
    model = model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # No tokenizer: reaching the calibration step would fail with another error.
    with pytest.raises(ConfigError, match=message):
        prune(model, None, "reap", sparsity)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="wanda", pattern="experts"), "use method 'magnitude' or 'reap'"),
        (dict(method="reap", pattern="channels"), "does not prune `pattern='channels'`"),
        (dict(method="reap", pattern="unstructured"), "does not prune `pattern='unstructured'`"),
        (dict(method="reap", pattern="experts", refine="dsnot"), "removes whole structures"),
        (dict(method="reap", pattern="experts", allocation="owl"), "allocation='owl'"),
        (dict(method="reap", pattern="experts", schedule="one-pass"), "runs sequentially"),
    ],
)
def test_bad_combinations_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**kwargs)


def test_cli_prunes_experts_and_the_card_lists_them(calibration_file, tokenizer, tmp_path):
    checkpoint = tmp_path / "tiny-mixtral"
    tiny_moe("mixtral").save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    output = tmp_path / "out"
    assert cli_main(["prune", "--model", str(checkpoint), "--method", "reap", "--pattern", "experts", "--sparsity",
                     "0.5", "--calibration", str(calibration_file), "--num-samples", "4", "--seq-len", "32",
                     "--output", str(output), "--no-progress"]) == 0
    assert json.loads((output / "config.json").read_text())["num_local_experts"] == 2
    report = json.loads((output / "pruning_report.json").read_text())
    removed = report["structure"]["removed_experts"]
    assert sorted(removed) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    card = (output / "README.md").read_text()
    assert "whole routed experts" in card and "Routed experts per MoE block: 4 -> 2" in card
    for name, experts in removed.items():
        assert f"| {name} | {', '.join(map(str, experts))} |" in card


@pytest.mark.parametrize("architecture", ["mixtral", "qwen2_moe"])  # fused experts; a ModuleList with a shared expert
def test_an_interrupted_expert_prune_resumes_bit_identical(tokenizer, tmp_path, architecture):
    from test_resume import Interrupted, interrupt_at, manifest

    reference = prune(tiny_moe(architecture, num_hidden_layers=3), tokenizer)
    first = tiny_moe(architecture, num_hidden_layers=3)
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        CalibratedPruner(config_of("reap", 0.5), tokenizer=tokenizer, progress=False, checkpoint_dir=tmp_path).prune(first)
    assert manifest(tmp_path)["completed_blocks"] == 2

    second = tiny_moe(architecture, num_hidden_layers=3)
    calls = []  # block 1 (block 0 runs once while the inputs are captured, whatever is resumed)
    finished = second.model.layers[1]
    (getattr(finished, "mlp", None) or finished.block_sparse_moe).register_forward_hook(lambda *_: calls.append(1))
    resumed = CalibratedPruner(config_of("reap", 0.5), tokenizer=tokenizer, progress=False,
                               checkpoint_dir=tmp_path).prune(second)
    assert not calls, "a finished block was scored again"
    for key in ("removed_experts", "expert_scores", "expert_tokens", "experts_after"):
        assert resumed.pruning_report.structure[key] == reference.pruning_report.structure[key]
    assert resumed.config.to_dict() == reference.config.to_dict()
    want, got = reference.state_dict(), resumed.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"


@pytest.mark.parametrize("architecture", ["mixtral", "qwen2_moe"])
def test_offloaded_experts_are_cut_like_in_memory(tokenizer, architecture):
    """Fused 3-D expert parameters (Mixtral) and an nn.ModuleList of expert MLPs (Qwen2-MoE) under cpu_offload."""
    from accelerate import cpu_offload

    from test_structured import _block_values

    expected = prune(tiny_moe(architecture), tokenizer)
    model = tiny_moe(architecture)
    cpu_offload(model, execution_device=torch.device("cpu"))
    pruned = prune(model, tokenizer)
    assert pruned.pruning_report.structure["removed_experts"] == expected.pruning_report.structure["removed_experts"]
    assert pruned.config.to_dict() == expected.config.to_dict()
    want, got = _block_values(expected), _block_values(pruned)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the in-memory prune"
    torch.testing.assert_close(pruned(IDS).logits, expected(IDS).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_remove_the_same_experts_as_one(calibration_file, tmp_path):
    from test_distributed import _launch, _prune_args, _torchrun

    checkpoint = tmp_path / "tiny-qwen3-moe"
    moe_model("qwen3_moe").save_pretrained(checkpoint)
    make_tokenizer().save_pretrained(checkpoint)
    args = ("--method", "reap", "--pattern", "experts", "--sparsity", "0.5")
    assert cli_main(_prune_args(checkpoint, calibration_file, tmp_path / "single", *args)) == 0
    _launch(_torchrun(2), _prune_args(checkpoint, calibration_file, tmp_path / "sharded", *args))
    single, sharded = (
        json.loads((tmp_path / run / "pruning_report.json").read_text())["structure"] for run in ("single", "sharded")
    )
    assert sharded["removed_experts"] == single["removed_experts"]
    assert sharded["expert_tokens"] == single["expert_tokens"]
    for name, scores in single["expert_scores"].items():
        assert sharded["expert_scores"][name] == pytest.approx(scores, rel=1e-4)


def test_experts_under_device_map_hooks_go_like_in_memory(tokenizer):
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    expected = prune(tiny_moe("mixtral"), tokenizer)
    model = tiny_moe("mixtral")
    for block in model.model.layers:
        add_hook_to_module(block, AlignDevicesHook(execution_device=torch.device("cpu"), io_same_device=True))
    pruned = prune(model, tokenizer)
    assert pruned.pruning_report.structure["removed_experts"] == expected.pruning_report.structure["removed_experts"]
    want, got = expected.state_dict(), pruned.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the in-memory prune"
