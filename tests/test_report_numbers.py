"""The numbers a prune's report prints, against direct computations from the weights and the calibration tokens.

Some Linears hold zeros before pruning (75 % of their weights), so measured sparsity differs from Linear to Linear
and from block to block: a count taken from the masks instead of the weights, or an unweighted mean, is wrong.
"""

import pytest
import torch

import reference_pruning as ref
from conftest import TEXT, make_tokenizer
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.calibration import build_calibration_samples
from reference_pruning import BLOCKS, LENGTH, SAMPLES, spread_model

PRE_ZEROED = ("model.layers.1.self_attn.v_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj")


def zero_three_quarters(model) -> None:
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in PRE_ZEROED:
            weight = model.get_submodule(name).weight
            order = torch.rand(weight.shape, generator=generator).argsort(dim=1)
            weight.scatter_(1, order[:, : weight.shape[1] * 3 // 4], 0.0)


@pytest.mark.parametrize("schedule", ["sequential", "one-pass"])
def test_report_numbers_match_direct_computations(schedule):
    config = PruningConfig(method="wanda", sparsity=0.5, calibration=[TEXT * 2], num_samples=SAMPLES, seq_len=LENGTH,
                           batch_size=8, schedule=schedule)
    tokenizer = make_tokenizer()
    model = spread_model()
    zero_three_quarters(model)
    report = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model).pruning_report

    # The same tokens, pruned by the plain reference schedule on the same model.
    samples = build_calibration_samples(config.calibration, tokenizer, num_samples=SAMPLES, seq_len=LENGTH, seed=0)
    assert samples.input_ids.numel() > ref.ERROR_TOKENS
    reference = spread_model()
    zero_three_quarters(reference)
    run = ref.prune_sequential if schedule == "sequential" else ref.prune_one_pass
    traces = run(reference, samples.input_ids, samples.attention_mask, "wanda", "unstructured", 0.5)

    weights = {name: model.get_submodule(name).weight for name in traces}
    for name, weight in weights.items():
        assert torch.equal(weight, traces[name].pruned), f"{name} is not pruned as the reference schedule prunes it"
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    sizes = {name: w.numel() for name, w in weights.items()}
    assert {zeros[n] / sizes[n] for n in PRE_ZEROED} == {0.75}

    layers = {record.name: record for record in report.layers}
    assert list(layers) == list(traces)
    for name, record in layers.items():
        assert record.measured_sparsity == zeros[name] / sizes[name], name
        direct = ref.relative_error(traces[name], traces[name].pruned_pass[: ref.ERROR_TOKENS])
        assert record.reconstruction_error == pytest.approx(direct, rel=1e-4), name

    table = report.summary_table().splitlines()
    for index, block in enumerate(report.blocks):
        names = [n for n in traces if n.startswith(f"model.layers.{index}.")]
        expected = sum(zeros[n] for n in names) / sum(sizes[n] for n in names)
        assert block.measured_sparsity == pytest.approx(expected, abs=1e-12), block.name
        worst = max(layers[n].reconstruction_error for n in names)
        assert f"{expected:9.4f} {worst:10.4f}" in table[2 + index], table[2 + index]
    assert len(report.blocks) == BLOCKS
    # A Llama block's rank >= 2 weights are its seven Linears: over the pruned matrices and over all block weights,
    # the same count.
    overall = sum(zeros.values()) / sum(sizes.values())
    assert report.pruned_sparsity == pytest.approx(overall, abs=1e-12)
    assert report.overall_sparsity == pytest.approx(overall, abs=1e-12)
    totals = [line for line in table if line.startswith(("pruned matrices", "all block weights"))]
    assert len(totals) == 2 and all(f"{overall:9.4f}" in line for line in totals), totals
