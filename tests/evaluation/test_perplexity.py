"""Perplexity equals a by-hand computation of the Wanda/SparseGPT protocol on the same windows."""

from __future__ import annotations

import math

import pytest
import torch

from hf_calibprune.evaluation import EvaluationError, perplexity, perplexity_details
from hf_calibprune.evaluation.data import read_records

TEXTS = [f" Robert Boulter is an English actor number {i} . He played in {i + 3} films . \n" for i in range(40)]


def _by_hand(model, tokenizer, text: str, seq_len: int, limit: int | None) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    count = ids.numel() // seq_len
    if limit is not None:
        count = min(count, limit)
    nlls = []
    with torch.no_grad():
        for index in range(count):
            window = ids[index * seq_len : (index + 1) * seq_len]
            log_probs = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            token_nll = -log_probs[torch.arange(seq_len - 1), window[1:]]
            nlls.append(token_nll.mean().item())
    return math.exp(sum(nlls) / len(nlls))


@pytest.mark.parametrize("batch_size,limit", [(1, None), (3, None), (4, 5)])
def test_perplexity_matches_direct_computation(model, tokenizer, batch_size, limit):
    expected = _by_hand(model, tokenizer, "\n\n".join(TEXTS), seq_len=32, limit=limit)
    value = perplexity(model, tokenizer, TEXTS, seq_len=32, batch_size=batch_size, limit=limit)
    assert value == pytest.approx(expected, rel=1e-4)


def test_windows_are_non_overlapping_and_drop_the_tail(model, tokenizer):
    details = perplexity_details(model, tokenizer, TEXTS, seq_len=32)
    total = tokenizer("\n\n".join(TEXTS), return_tensors="pt").input_ids.numel()
    assert details["windows"] == total // 32
    assert details["tokens"] == details["windows"] * 32
    # Different windows give a different number: the window length matters.
    assert perplexity(model, tokenizer, TEXTS, seq_len=16) != pytest.approx(details["perplexity"], rel=1e-6)


def test_named_source_reads_rows_joined_with_blank_lines(model, tokenizer, small_data_dir):
    rows = read_records(small_data_dir / "wikitext2" / "test.shared.jsonl")
    direct = perplexity(model, tokenizer, [row["text"] for row in rows], seq_len=32, limit=4)
    named = perplexity(model, tokenizer, "wikitext2", seq_len=32, limit=4, data_dir=small_data_dir)
    assert named == pytest.approx(direct, rel=1e-6)


def test_local_file_and_c4(model, tokenizer, small_data_dir, tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("\n\n".join(TEXTS), encoding="utf-8")
    assert perplexity(model, tokenizer, str(path), seq_len=32, limit=3) == pytest.approx(
        perplexity(model, tokenizer, TEXTS, seq_len=32, limit=3), rel=1e-6
    )
    details = perplexity_details(model, tokenizer, "c4", seq_len=32, limit=2, data_dir=small_data_dir)
    assert "documents 30-39" in details["text"] and details["windows"] == 2
    assert math.isfinite(details["perplexity"])


def test_training_mode_is_restored(model, tokenizer):
    model.train()
    try:
        perplexity(model, tokenizer, TEXTS, seq_len=32, limit=1)
        assert model.training
    finally:
        model.eval()


def test_clear_errors(model, tokenizer, tmp_path):
    with pytest.raises(EvaluationError, match="wikitext2"):
        perplexity(model, tokenizer, "wikitext2", data_dir=tmp_path)
    with pytest.raises(EvaluationError, match="fewer than one window"):
        perplexity(model, tokenizer, ["short"], seq_len=128)
    with pytest.raises(EvaluationError, match="neither a file nor a known evaluation text"):
        perplexity(model, tokenizer, "wikitext3")
