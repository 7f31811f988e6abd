"""`hf-calibprune study` with a structured pattern: the pruned runs are smaller models, counted in the table."""

from __future__ import annotations

import csv

from hf_calibprune.cli import main


def test_study_compares_calibration_sources_for_a_structured_method(model, tokenizer, small_data_dir, tmp_path, capsys):
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    output = tmp_path / "out"
    code = main([
        "study", "--model", str(directory), "--methods", "flap,wanda", "--pattern", "channels", "--sparsity", "0.25",
        "--calibration", "c4,gsm8k", "--eval", "wikitext2", "--num-samples", "4", "--seq-len", "32", "--limit", "2",
        "--data-dir", str(small_data_dir), "--output", str(output),
    ])
    assert code == 0, capsys.readouterr().out
    with open(output / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["dense", "flap", "flap", "wanda", "wanda"]
    dense = int(rows[0]["parameters"])
    for row in rows[1:]:
        assert row["status"] == "ok" and row["pattern"] == "channels"
        assert int(row["parameters"]) < dense
        assert float(row["overall_sparsity"]) > 0.2
        assert float(row["wikitext2/ppl"]) > 1
