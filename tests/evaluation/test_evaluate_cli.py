"""`hf-calibprune evaluate` prints a table and writes into the checkpoint's pruning_report.json."""

from __future__ import annotations

import hashlib
import json

import pytest

from hf_calibprune.commands import evaluate as evaluate_command
from hf_calibprune.evaluation import EvaluationError, evaluate_model, parse_tasks, perplexity


def _run(argv):
    import argparse

    parser = argparse.ArgumentParser()
    evaluate_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def checkpoint(tmp_path, model, tokenizer):
    directory = tmp_path / "pruned"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    report = {"method": "wanda", "overall_sparsity": 0.5, "evaluation": {"earlier": {"metric": "x", "value": 1.0}}}
    (directory / "pruning_report.json").write_text(json.dumps(report), encoding="utf-8")
    (directory / "README.md").write_text("---\nlicense: apache-2.0\n---\n\nThe user's own words.\n", encoding="utf-8")
    return directory


def test_evaluate_cli_writes_the_report(checkpoint, small_data_dir, model, tokenizer, capsys):
    code = _run(
        ["evaluate", str(checkpoint), "--tasks", "wikitext2,gsm8k", "--data-dir", str(small_data_dir),
         "--seq-len", "32", "--limit", "2", "--batch-size", "2"]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "wikitext2" in table and "gsm8k" in table
    report = json.loads((checkpoint / "pruning_report.json").read_text(encoding="utf-8"))
    assert report["method"] == "wanda" and report["evaluation"]["earlier"]["value"] == 1.0
    wikitext = report["evaluation"]["wikitext2"]
    expected = perplexity(model, tokenizer, "wikitext2", seq_len=32, limit=2, data_dir=small_data_dir)
    assert wikitext["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert wikitext["metric"] == "perplexity" and wikitext["value"] == wikitext["perplexity"]
    assert report["evaluation"]["gsm8k"]["n"] == 2
    assert not [p for p in checkpoint.iterdir() if p.name.endswith(".tmp")]
    # The report is published: the data file evaluated on is named, not placed (and stays identifiable).
    assert str(small_data_dir) not in (checkpoint / "pruning_report.json").read_text(encoding="utf-8")
    gsm8k_file = small_data_dir / "gsm8k" / report["evaluation"]["gsm8k"]["file"]
    assert {"name": gsm8k_file.name, "bytes": gsm8k_file.stat().st_size,
            "sha256": hashlib.sha256(gsm8k_file.read_bytes()).hexdigest()} in report["local_files"]

    from huggingface_hub import ModelCard

    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.license == "apache-2.0" and "The user's own words." in card.text
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values["wikitext2"] == pytest.approx(wikitext["perplexity"])


def test_evaluate_cli_rejects_unknown_tasks_before_loading(tmp_path):
    with pytest.raises(EvaluationError, match="Did you mean 'gsm8k'"):
        _run(["evaluate", str(tmp_path / "missing"), "--tasks", "gsm8kk"])


def test_parse_tasks():
    names = [spec.name for spec in parse_tasks("wikitext2, gsm8k:cot ,lm-eval:zeroshot")]
    assert names[:2] == ["wikitext2", "gsm8k:cot"]
    assert names[2:] == [f"lm-eval:{t}" for t in ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")]
    with pytest.raises(EvaluationError, match="lm-eval"):
        parse_tasks("lm-eval:piqa")


def test_evaluate_model_results_shape(model, tokenizer, small_data_dir):
    results = evaluate_model(model, tokenizer, ["wikitext2"], data_dir=small_data_dir, limit=2, seq_len=32)
    assert set(results) == {"wikitext2"}
    assert results["wikitext2"]["windows"] == 2 and results["wikitext2"]["dataset"] == "wikitext2"
