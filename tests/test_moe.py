"""Mixture-of-Experts models: every expert matrix pruned at its target from the tokens routed to it, and a report
whose totals are counted from the weights."""

import copy
import logging

import pytest
import torch
from torch import nn

from conftest import MOE_OVERRIDES, tiny_model, tiny_moe
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.engine import EngineOptions, LayerwiseEngine
from hf_calibprune.engine.experts import ExpertCollector, eager_experts
from hf_calibprune.errors import ModelStructureError
from hf_calibprune.methods import build_method
from hf_calibprune.models import find_fused_experts, find_moe_blocks
from hf_calibprune.sparsity import parse_pattern

ARCHITECTURES = list(MOE_OVERRIDES)


def tokens(batch=4, length=32, seed=0):
    ids = torch.randint(4, 99, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def prune(model, method="wanda", pattern="unstructured", schedule="sequential", min_expert_tokens=1, **options):
    engine = LayerwiseEngine(
        model,
        EngineOptions(batch_size=2, schedule=schedule, progress=False, min_expert_tokens=min_expert_tokens, **options),
    )
    captured = engine.capture(*tokens()) if build_method(method).needs != "none" else None
    sparsities = {engine.layout.block_name(i): 0.5 for i in range(len(engine.layout.blocks))}
    return engine.prune(build_method(method), parse_pattern(pattern), sparsities, captured)


def expert_matrices(model):
    """(name, [out, in] matrix) of every expert's gate, up and down in every block, sliced here from the 3-D
    parameters by the layout transformers documents (not by hf_calibprune's own discovery)."""
    found = []
    for index, block in enumerate(model.model.layers):
        experts = getattr(getattr(block, "mlp", None), "experts", None)
        if not isinstance(getattr(experts, "down_proj", None), torch.Tensor):
            continue
        for expert in range(experts.down_proj.shape[0]):
            gate_up, down = experts.gate_up_proj[expert].detach(), experts.down_proj[expert].detach()
            if experts.is_transposed:  # gpt-oss: [in, out], gate and up interleaved column by column
                gate, up, down = gate_up[:, ::2].t(), gate_up[:, 1::2].t(), down.t()
            else:
                gate, up = gate_up.chunk(2)
            for part, matrix in (("gate", gate), ("up", up), ("down", down)):
                found.append((f"{index}.{expert}.{part}", matrix))
    return found


def block_weights_sparsity(model):
    zeros = total = 0
    for block in model.model.layers:
        for _, parameter in block.named_parameters():
            if parameter.dim() >= 2:
                total += parameter.numel()
                zeros += int((parameter == 0).sum())
    return zeros / total


@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_expert_matrix_reaches_its_target(architecture, method, pattern, schedule, tokenizer, calibration_file):
    model = tiny_moe(architecture)
    config = PruningConfig(method=method, sparsity=0.5, pattern=pattern, calibration=str(calibration_file),
                           num_samples=4, seq_len=32, schedule=schedule, min_expert_tokens=8)
    model = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
    matrices = expert_matrices(model)
    blocks = {name.split(".")[0] for name, _ in matrices}
    assert len(blocks) == sum(1 for b in model.model.layers if find_fused_experts(b))
    assert len(matrices) == 12 * len(blocks)  # 4 experts x (gate, up, down) in every MoE block
    for name, matrix in matrices:
        if pattern == "unstructured":
            assert int((matrix == 0).sum()) == matrix.numel() // 2, name
        else:
            groups = matrix.reshape(matrix.shape[0], -1, 4)
            assert bool(((groups == 0).sum(dim=-1) >= 2).all()), name
    report = model.pruning_report
    assert report.overall_sparsity == pytest.approx(block_weights_sparsity(model), abs=1e-12)
    assert {w["reason"] for w in report.dense_weights} <= {"router", "bias"}
    assert model.config._experts_implementation == "grouped_mm"  # the user's setting is back


def test_routers_stay_dense_and_are_listed_shared_experts_are_pruned(tokenizer, calibration_file):
    model = tiny_moe("qwen2_moe")
    routers = {f"model.layers.{i}.{r}": getattr(b.get_submodule(r.rsplit(".", 1)[0]), "weight").detach().clone()
               for i, b in enumerate(model.model.layers) for moe in find_moe_blocks(b) for r in moe.routers}
    assert len(routers) == 4  # mlp.gate and mlp.shared_expert_gate in each block
    config = PruningConfig(method="wanda", sparsity=0.5, calibration=str(calibration_file), num_samples=4, seq_len=32)
    model = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
    for name, before in routers.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(module.weight, before), name
    listed = {w["name"]: w["reason"] for w in model.pruning_report.dense_weights}
    assert listed == {name: "router" for name in routers}
    for block in model.model.layers:
        for linear in (block.mlp.shared_expert.gate_proj, block.mlp.shared_expert.up_proj, block.mlp.shared_expert.down_proj):
            assert float((linear.weight == 0).float().mean()) == 0.5


@pytest.mark.parametrize("architecture", ["gpt_oss", "deepseek_v3"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_an_expert_routed_no_tokens_is_pruned_from_every_token(architecture, method):
    model = tiny_moe(architecture)
    for block in model.model.layers:
        for moe in find_moe_blocks(block):
            router = block.get_submodule(moe.name).get_submodule(moe.routers[0].split(".")[-2])
            bias = getattr(router, "bias", None)
            if bias is None:
                bias = router.e_score_correction_bias
            with torch.no_grad():
                bias[3] = -1e4  # expert 3 is never chosen
    reference = copy.deepcopy(model)
    layers, _ = prune(model, method, min_expert_tokens=4)
    prune(reference, method, moe_calibration="all")
    records = [r for r in layers if "[3]" in r.name]
    assert records and all(r.measured_sparsity == 0.5 for r in records)
    if method != "magnitude":
        assert all(r.info["tokens"] == 0 and r.info["statistics"] == "all" for r in records)
    # Where the inputs are the same (the first MoE block), the fallback equals pruning with every token.
    first = next(i for i, b in enumerate(model.model.layers) if find_fused_experts(b))
    for fused, twin in zip(find_fused_experts(model.model.layers[first]), find_fused_experts(reference.model.layers[first])):
        for parameter in fused.parameters:
            assert torch.equal(getattr(fused.module, parameter)[3], getattr(twin.module, parameter)[3])


def _experts_inputs(model, block_index, ids, mask):
    """Inputs and routing of the experts of block ``block_index`` in a forward of ``model``."""
    seen = {}
    experts = find_fused_experts(model.model.layers[block_index])[0].module

    def hook(module, args):
        seen["hidden"], seen["index"] = args[0].detach().clone(), args[1].detach().clone()

    handle = experts.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    return seen["hidden"], seen["index"]


def _wanda_kept(weight, inputs):
    scores = weight.double().abs() * inputs.double().square().sum(dim=0).sqrt()
    keep = scores.shape[1] - scores.shape[1] // 2
    return scores, scores.topk(keep, dim=1).indices


def _assert_mask_matches(matrix, weight, inputs, name):
    scores, kept = _wanda_kept(weight, inputs)
    expected = torch.zeros_like(matrix, dtype=torch.bool).scatter_(1, kept, True)
    actual = matrix != 0
    threshold = scores.gather(1, kept).min(dim=1, keepdim=True).values
    near_tie = (scores - threshold).abs() <= 1e-6 * threshold
    assert bool(((expected == actual) | near_tie).all()), name


@pytest.mark.parametrize("padding", [0, 8])
@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
def test_wanda_expert_masks_equal_a_direct_computation_from_routed_inputs_in_every_block(schedule, padding):
    dense = tiny_moe("mixtral", num_hidden_layers=3)
    model = copy.deepcopy(dense)
    ids, mask = tokens()
    mask[0, mask.shape[1] - padding :] = 0
    # One sample per batch: one-pass meets its micro-batches before each expert matrix.
    engine = LayerwiseEngine(model, EngineOptions(batch_size=1, schedule=schedule, progress=False, min_expert_tokens=1))
    sparsities = {engine.layout.block_name(i): 0.5 for i in range(3)}
    engine.prune(build_method("wanda"), parse_pattern("unstructured"), sparsities, engine.capture(ids, mask))
    for index, block in enumerate(model.model.layers):
        # Sequential: block k's statistics come from dense block k on the pruned blocks' outputs. One-pass: from
        # the pruned model itself, each matrix's inputs computed through the matrices pruned before it.
        probe = copy.deepcopy(model)
        if schedule == "sequential":
            probe.model.layers[index].load_state_dict(dense.model.layers[index].state_dict())
        hidden, routing = _experts_inputs(probe, index, ids, mask)
        source = probe.model.layers[index].mlp.experts
        pruned = block.mlp.experts
        for expert in range(4):
            routed = hidden[(routing == expert).any(dim=-1) & mask.reshape(-1).bool()]
            gate, up = source.gate_up_proj[expert].detach().chunk(2)
            down_inputs = source.act_fn(routed @ gate.t()) * (routed @ up.t())
            dense_gate, dense_up = dense.model.layers[index].mlp.experts.gate_up_proj[expert].detach().chunk(2)
            half = gate.shape[0]
            _assert_mask_matches(pruned.gate_up_proj[expert][:half], dense_gate, routed, f"{index}.{expert}.gate")
            _assert_mask_matches(pruned.gate_up_proj[expert][half:], dense_up, routed, f"{index}.{expert}.up")
            _assert_mask_matches(pruned.down_proj[expert], dense.model.layers[index].mlp.experts.down_proj[expert].detach(),
                                 down_inputs, f"{index}.{expert}.down")


@pytest.mark.parametrize("calibration", ["routed", "all"])
@pytest.mark.parametrize("architecture", ["mixtral", "gpt_oss"])
def test_the_calibration_hooks_leave_the_logits_unchanged(architecture, calibration):
    model = tiny_moe(architecture)
    ids, _ = tokens()
    experts = [f for b in model.model.layers for f in find_fused_experts(b)]
    with eager_experts(experts), torch.no_grad():
        before = model(input_ids=ids).logits
        collectors = [ExpertCollector([f], hessian=True, calibration=calibration, min_tokens=1000) for f in experts]
        try:
            after = model(input_ids=ids).logits
        finally:
            for collector in collectors:
                collector.remove()
    assert torch.equal(before, after)
    assert all(stats.num_tokens > 0 for c in collectors for stats in c.stats.values())
    assert model.config._experts_implementation == "grouped_mm"


def test_eager_experts_is_restored_after_an_error():
    model = tiny_moe("mixtral")
    experts = find_fused_experts(model.model.layers[0])
    with pytest.raises(RuntimeError), eager_experts(experts):
        assert experts[0].module.config._experts_implementation == "eager"
        raise RuntimeError("boom")
    assert experts[0].module.config._experts_implementation == "grouped_mm"


def test_all_calibration_gives_every_expert_every_token():
    model = tiny_moe("mixtral")
    layers, _ = prune(model, "sparsegpt", moe_calibration="all")
    experts = [r for r in layers if "experts" in r.name]
    assert experts and all(r.info["statistics"] == "all" for r in experts)
    assert all(r.reconstruction_error is not None and 0 <= r.reconstruction_error < 1 for r in experts)


def test_config_rejects_bad_moe_settings():
    with pytest.raises(Exception, match="moe_calibration"):
        PruningConfig(moe_calibration="routd")
    with pytest.raises(Exception, match="min_expert_tokens"):
        PruningConfig(min_expert_tokens=0)
    with pytest.raises(Exception, match="strict"):
        PruningConfig(strict="yes")


class _Lookup(nn.Module):
    """A block weight of a kind the engine does not prune (used in the forward, so it matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(32, 32) * 0.01)

    def forward(self, hidden):
        return hidden + hidden @ self.table


def _with_unknown_weights():
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp.lookup = _Lookup()
        block.mlp.register_forward_pre_hook(lambda module, args: (module.lookup(args[0]),))
    return model


def test_weights_the_engine_cannot_prune_are_warned_about_counted_and_refused_when_strict(
    tokenizer, calibration_file, caplog
):
    config = dict(method="wanda", sparsity=0.5, calibration=str(calibration_file), num_samples=4, seq_len=32)
    with pytest.raises(ModelStructureError, match=r"model\.layers\.1\.mlp\.lookup\.table \(32, 32\)"):
        CalibratedPruner(PruningConfig(strict=True, **config), tokenizer=tokenizer, progress=False).prune(
            _with_unknown_weights()
        )
    with caplog.at_level(logging.WARNING, logger="hf_calibprune"):
        model = CalibratedPruner(PruningConfig(**config), tokenizer=tokenizer, progress=False).prune(
            _with_unknown_weights()
        )
    assert "model.layers.0.mlp.lookup.table (32, 32) (1,024 weights)" in caplog.text
    report = model.pruning_report
    assert [(w["name"], w["reason"]) for w in report.dense_weights] == [
        ("model.layers.0.mlp.lookup.table", "unsupported"),
        ("model.layers.1.mlp.lookup.table", "unsupported"),
    ]
    assert report.pruned_sparsity == 0.5
    assert report.overall_sparsity == pytest.approx(block_weights_sparsity(model), abs=1e-12)
    assert report.overall_sparsity < 0.5
    assert "unsupported 2 (2,048 weights)" in report.summary_table()


def test_ignored_linears_count_as_dense():
    model = tiny_model("llama")
    engine = LayerwiseEngine(model, EngineOptions(ignore=("down_proj",), progress=False))
    from hf_calibprune.engine.accounting import dense_weights

    listed = dense_weights(engine.layout, ("down_proj",))
    assert [w.name for w in listed] == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert {w.reason for w in listed} == {"ignored"}


def test_owl_scores_experts_from_their_routed_tokens(tokenizer, calibration_file):
    model = tiny_moe("mixtral", num_hidden_layers=3)
    config = PruningConfig(method="wanda", sparsity=0.5, allocation="owl", owl_lambda=0.1, owl_threshold=1.5,
                           calibration=str(calibration_file), num_samples=4, seq_len=32)
    engine = LayerwiseEngine(model, EngineOptions(progress=False, min_expert_tokens=1))
    captured = engine.capture(*tokens())
    ratios = engine.outlier_ratios(captured, threshold=1.5)
    attention_only = LayerwiseEngine(copy.deepcopy(model), EngineOptions(progress=False, ignore=("experts",)))
    without_experts = attention_only.outlier_ratios(attention_only.capture(*tokens()), threshold=1.5)
    assert ratios.keys() == without_experts.keys() and ratios != without_experts
    model = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
    per_block = model.pruning_report.layer_sparsity
    assert len(set(per_block.values())) > 1
    for index, block in enumerate(model.model.layers):
        for matrix in expert_matrices(model):
            if matrix[0].startswith(f"{index}."):
                target = per_block[f"model.layers.{index}"]
                measured = float((matrix[1] == 0).float().mean())
                assert abs(measured - target) <= 1 / matrix[1].shape[1], matrix[0]  # Wanda compares per row


class _LegacyExpert(nn.Module):
    """transformers 4.x ``MixtralBlockSparseTop2MLP``: one expert as three Linears."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, intermediate, bias=False)
        self.w2 = nn.Linear(intermediate, hidden, bias=False)
        self.w3 = nn.Linear(hidden, intermediate, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class _LegacySparseMoe(nn.Module):
    """transformers 4.x ``MixtralSparseMoeBlock``: a Linear router and an ``nn.ModuleList`` of experts."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int = 4, top_k: int = 2) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(_LegacyExpert(hidden, intermediate) for _ in range(num_experts))

    def forward(self, hidden_states):
        batch, length, width = hidden_states.shape
        flat = hidden_states.reshape(-1, width)
        weights, selected = torch.topk(torch.softmax(self.gate(flat), dim=-1), self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(flat)
        for index, expert in enumerate(self.experts):
            token, slot = torch.where(selected == index)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out.reshape(batch, length, width)


def test_experts_kept_as_a_module_list_are_found_pruned_from_routed_tokens_and_their_router_stays_dense():
    model = tiny_model("llama")
    torch.manual_seed(0)
    for block in model.model.layers:
        block.mlp = _LegacySparseMoe(32, 24)
    routers = [block.mlp.gate.weight.detach().clone() for block in model.model.layers]
    routed = {}
    handles = [
        block.mlp.experts[e].w2.register_forward_pre_hook(lambda m, a, key=(i, e): routed.update({key: a[0].shape[0]}))
        for i, block in enumerate(model.model.layers) for e in range(4)
    ]
    prune(model, "sparsegpt")
    for handle in handles:
        handle.remove()
    for index, block in enumerate(model.model.layers):
        assert torch.equal(block.mlp.gate.weight, routers[index])
        for expert in block.mlp.experts:
            for linear in (expert.w1, expert.w2, expert.w3):
                assert float((linear.weight == 0).float().mean()) == 0.5
    from hf_calibprune.engine.accounting import dense_weights

    listed = dense_weights(LayerwiseEngine(model, EngineOptions(progress=False)).layout)
    assert [(w.name, w.reason) for w in listed] == [(f"model.layers.{i}.mlp.gate.weight", "router") for i in range(2)]
    assert len(routed) == 8  # every expert of every block was called with its routed tokens only


def _legacy_moe_model(unrouted_expert=None):
    model = tiny_model("llama")
    torch.manual_seed(0)
    for block in model.model.layers:
        block.mlp = _LegacySparseMoe(32, 24)
        if unrouted_expert is not None:
            block.mlp.gate = nn.Linear(32, 4, bias=True)
            with torch.no_grad():
                block.mlp.gate.bias.zero_()
                block.mlp.gate.bias[unrouted_expert] = -1e4
    return model


@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_module_list_experts_routed_no_tokens_are_pruned_from_every_token(method, schedule):
    model = _legacy_moe_model(unrouted_expert=3)
    reference = _legacy_moe_model(unrouted_expert=3)
    layers, _ = prune(model, method, schedule=schedule, min_expert_tokens=1)
    prune(reference, method, schedule=schedule, moe_calibration="all")
    unrouted = [r for r in layers if ".experts.3." in r.name]
    assert len(unrouted) == 6 and all(r.measured_sparsity == 0.5 for r in unrouted)
    assert all(r.info["tokens"] == 0 and r.info["statistics"] == "all" for r in unrouted)
    routed = [r for r in layers if ".experts.0." in r.name]
    assert all(r.info["tokens"] > 0 and r.info["statistics"] == "routed" for r in routed)
    first, twin = model.model.layers[0].mlp.experts[3], reference.model.layers[0].mlp.experts[3]
    for name in ("w1", "w2", "w3"):
        assert torch.equal(getattr(first, name).weight, getattr(twin, name).weight), name


def test_the_card_shows_both_totals_what_stayed_dense_and_the_experts_tokens(tokenizer, calibration_file, tmp_path):
    from hf_calibprune import save_sparse

    model = tiny_moe("qwen2_moe")
    config = PruningConfig(method="wanda", sparsity=0.5, calibration=str(calibration_file), num_samples=4, seq_len=32,
                           min_expert_tokens=1)
    model = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
    save_sparse(model, tmp_path / "out", tokenizer=tokenizer)
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    report = model.pruning_report
    assert f"| measured sparsity (all decoder-block weights) | {100 * report.overall_sparsity:.2f}% |" in card
    assert f"| measured sparsity (pruned matrices) | {100 * report.pruned_sparsity:.2f}% |" in card
    assert "| router | 4 | 320 | `model.layers.0.mlp.gate.weight`, `model.layers.0.mlp.shared_expert_gate.weight`" in card
    tokens = sorted(report.experts["model.layers.1.mlp.experts"]["tokens"])
    assert f"| model.layers.1.mlp.experts | 4 | {tokens[0]} / {tokens[2]} / {tokens[-1]} | 0 |" in card
