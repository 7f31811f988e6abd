"""Both schedules against plain reference statements of them (``tests/reference_pruning.py``), mask by mask on every
Linear of every block of a 3-block model, for Wanda and SparseGPT, unstructured and 2:4.

The calibration set holds more than 1,024 non-padding tokens in one batch (the statistics accumulate in internal
chunks of 1,024 tokens), some of them padding, and the model's norm weights are spread so that activation norms
decide the ranking: feeding a block dense instead of pruned inputs, or pruning a Linear after it computes, changes
masks in later Linears and blocks.
"""

import pytest
import torch

import reference_pruning as ref
from hf_calibprune.engine import EngineOptions, LayerwiseEngine
from hf_calibprune.methods import build_method
from hf_calibprune.sparsity import parse_pattern
from reference_pruning import BLOCKS, calibration_tokens, spread_model


def engine_prune(model, method, pattern, schedule, batch_size=8):
    engine = LayerwiseEngine(model, EngineOptions(batch_size=batch_size, schedule=schedule, progress=False))
    captured = engine.capture(*calibration_tokens())
    sparsities = {engine.layout.block_name(i): 0.5 for i in range(BLOCKS)}
    return engine.prune(build_method(method), parse_pattern(pattern), sparsities, captured)


def reference_prune(model, method, pattern, schedule):
    run = ref.prune_sequential if schedule == "sequential" else ref.prune_one_pass
    return run(model, *calibration_tokens(), method, pattern, 0.5)


# One-pass in micro-batches of 3 samples (3 + 3 + 3 + 1) must prune as the reference's single batch of all 10.
@pytest.mark.parametrize(
    "schedule, batch_size", [("sequential", 8), ("one-pass", 3), ("one-pass", 10)],
    ids=["sequential", "one-pass", "one-pass-one-batch"],
)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_every_mask_of_every_block_matches_the_reference_schedule(schedule, batch_size, method, pattern):
    expected = reference_prune(spread_model(), method, pattern, schedule)
    model = spread_model()
    records, _ = engine_prune(model, method, pattern, schedule, batch_size)
    linears = {n: m for n, m in model.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)}
    assert sorted(linears) == sorted(expected) and len(linears) == 7 * BLOCKS
    wrong = {}
    for name, module in linears.items():
        differing = int(((module.weight == 0) != expected[name].mask).sum())
        if differing:
            wrong[name] = differing
    assert not wrong, f"masks differ from the reference {schedule} schedule (Linear: weights differing): {wrong}"
    if method == "sparsegpt":  # the kept weights are updated too
        for name, module in linears.items():
            torch.testing.assert_close(module.weight, expected[name].pruned, rtol=1e-3, atol=1e-4, msg=name)
    # The recorded numbers, on the tokens they are defined on (padding excluded, in sample order).
    assert [r.name for r in records] == list(expected)
    for record in records:
        trace = expected[record.name]
        zeros = int((linears[record.name].weight == 0).sum())
        assert record.measured_sparsity == zeros / trace.dense.numel(), record.name
        assert record.reconstruction_error == pytest.approx(ref.error_as_reported(trace, method), rel=1e-3), record.name


def test_the_calibration_set_separates_the_schedules():
    """The schedules agree where both read dense inputs (block 0's q/k/v) and differ on the o_proj and down_proj of
    every block, which read outputs of Linears the schedules treat differently: a check of this test's inputs."""
    sequential = reference_prune(spread_model(), "wanda", "unstructured", "sequential")
    one_pass = reference_prune(spread_model(), "wanda", "unstructured", "one-pass")
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(sequential[f"model.layers.0.self_attn.{name}"].mask, one_pass[f"model.layers.0.self_attn.{name}"].mask)
    for block in range(BLOCKS):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            key = f"model.layers.{block}.{name}"
            assert not torch.equal(sequential[key].mask, one_pass[key].mask), key
    assert sequential["model.layers.0.self_attn.q_proj"].chosen_from.shape[0] == 1320  # 1,440 minus padding
