"""`hf-calibprune study` with a structured pattern: the pruned runs are smaller models, counted in the table."""

from __future__ import annotations

import csv

import pytest

from conftest import tiny_moe
from hf_calibprune.cli import main


@pytest.mark.parametrize(
    "pattern, methods, sparsity, architecture",
    [("channels", "flap,wanda", "0.25", None), ("experts", "reap,magnitude", "0.5", "mixtral")],
)
def test_study_compares_calibration_sources_for_a_structured_method(
    pattern, methods, sparsity, architecture, model, tokenizer, small_data_dir, tmp_path, capsys
):
    directory = tmp_path / "model"
    if architecture is not None:
        model = tiny_moe(architecture, vocab_size=len(tokenizer), eos_token_id=0, bos_token_id=None, pad_token_id=None)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    output = tmp_path / "out"
    code = main([
        "study", "--model", str(directory), "--methods", methods, "--pattern", pattern, "--sparsity", sparsity,
        "--calibration", "c4,gsm8k", "--eval", "wikitext2", "--num-samples", "4", "--seq-len", "32", "--limit", "2",
        "--data-dir", str(small_data_dir), "--output", str(output),
    ])
    assert code == 0, capsys.readouterr().out
    with open(output / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    first, second = methods.split(",")
    assert [row["method"] for row in rows] == ["dense", first, first, second, second]
    dense = int(rows[0]["parameters"])
    for row in rows[1:]:
        assert row["status"] == "ok" and row["pattern"] == pattern
        assert int(row["parameters"]) < dense
        assert float(row["overall_sparsity"]) > 0.2
        assert float(row["wikitext2/ppl"]) > 1
