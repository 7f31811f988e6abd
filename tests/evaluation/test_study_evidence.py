"""The study as evidence: seeds, the acceptance interface, the source × domain matrix with held-apart rows
(checked by hashes), the language matrix, chance levels."""

from __future__ import annotations

import csv
import json

import pytest

from hf_calibprune.calibration.io import read_records
from hf_calibprune.calibration.sources import make_source
from hf_calibprune.calibration.sources.base import LoadRequest
from hf_calibprune.cli import main
from hf_calibprune.evaluation.domains import domain_split, text_sha256
from hf_calibprune.study.analysis import chance_levels, group_cells

from .conftest import write_jsonl

SEEDS = ("0", "1")


@pytest.fixture(scope="module")
def study(tmp_path_factory, model, tokenizer):
    """One study run through the acceptance interface, with languages, shared by the tests below."""
    root = tmp_path_factory.mktemp("study")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = root / "data"
    write_jsonl(data / "wikitext2" / "test.shared.jsonl", [{"text": f" Robert Boulter is actor number {i} . He played in {i + 3} films . \n"} for i in range(60)])
    write_jsonl(
        data / "c4" / "c4-train.00000-of-01024.docs000-799.jsonl",
        [{"text": f"Beginners BBQ class {i} taking place in Missoula! " * 8, "timestamp": "", "url": ""} for i in range(40)],
    )
    train = [
        {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples?", "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}"}
        for i in range(40)
    ]
    write_jsonl(data / "gsm8k" / "train.jsonl", train)
    # The test file repeats three training rows: the domain text must drop them.
    test = [{"question": f"Ann has {i} pears and eats {i} of them. How many pears?", "answer": f"{i} - {i} = 0\n#### 0"} for i in range(30)]
    write_jsonl(data / "gsm8k" / "test.shared.jsonl", test + train[:3])
    for language, word in (("en", "house"), ("de", "Haus")):
        write_jsonl(data / "multilingual" / language / "calib.jsonl", [{"text": f"The {word} {i} is big. " * 20} for i in range(10)])
        write_jsonl(data / "multilingual" / language / "pud.jsonl", [{"id": f"n{i}", "text": f"A {word} number {i} stands here."} for i in range(80)])
    output = root / "out"
    argv = [
        "study", "--model", str(root / "model"), "--methods", "wanda", "--sparsity", "0.5", "--calibration", "c4,gsm8k",
        "--formats", "icl", "--seeds", ",".join(SEEDS), "--baseline", "c4", "--eval", "wikitext2,ppl:gsm8k,ppl:c4",
        "--num-samples", "4", "--seq-len", "32", "--limit", "3", "--data-dir", str(data), "--output", str(output),
        "--languages", "en,de",
    ]
    assert main(argv) == 0
    return output, data


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_results_have_one_row_per_seed_and_the_markdown_intervals(study):
    output, _ = study
    rows = _csv(output / "results.csv")
    grid = [row for row in rows if row["kind"] == "pruned"]
    assert sorted((row["calibration"], row["seed"]) for row in grid) == [("c4", "0"), ("c4", "1"), ("gsm8k", "0"), ("gsm8k", "1")]
    assert [row["seed"] for row in rows if row["kind"] == "dense"] == [""]
    markdown = (output / "results.md").read_text(encoding="utf-8")
    assert "## Against the baseline (c4)" in markdown
    gsm8k_line = next(line for line in markdown.splitlines() if line.startswith("| gsm8k (icl) | wanda | 2 |"))
    assert " ± " in gsm8k_line and "[" in gsm8k_line
    comparison = next(line for line in markdown.split("## Against the baseline")[1].splitlines() if line.startswith("| gsm8k (icl)"))
    assert any(verdict in comparison for verdict in ("better", "worse", "not distinguishable"))
    assert (output / "wikitext2_ppl.png").read_bytes()[:4] == b"\x89PNG"


def test_seed_rows_differ_in_their_calibration_fingerprint_and_nowhere_else(study):
    output, _ = study
    records = [json.loads(path.read_text()) for path in (output / "runs").glob("*.json")]
    for source in ("c4", "gsm8k", "ud@de"):
        first, second = sorted((r for r in records if r["calibration"] == source), key=lambda r: r["seed"])
        assert (first["seed"], second["seed"]) == (0, 1)
        differing = {key for key in first["key"] if first["key"][key] != second["key"][key]}
        assert differing == {"seed"}
        a, b = first["calibration_fingerprint"], second["calibration_fingerprint"]
        assert a["token_sha256"] != b["token_sha256"] and first["calibration_sha256"] != second["calibration_sha256"]
        assert {key: value for key, value in a.items() if key not in ("token_sha256", "seed")} == {
            key: value for key, value in b.items() if key not in ("token_sha256", "seed")
        }
        assert (a["seed"], b["seed"]) == (0, 1)
        for field in ("method", "format", "requested_format", "sparsity", "pattern", "kind"):
            assert first[field] == second[field]


def _calibration_row_hashes(record, source, data):
    """sha256 of every row the run's calibration could read, rendered as the domain renders them."""
    [entry] = record["calibration_fingerprint"]["sources"]
    rows = [row for path in entry["files"] for row in read_records(path)]
    instance = make_source(source)
    from hf_calibprune.evaluation.domains import _unit_texts

    return {text_sha256(text) for text in _unit_texts(instance, rows, {"origin": "local"})}


def test_domain_text_never_shares_a_row_with_the_calibration_rows(study):
    output, data = study
    records = [json.loads(path.read_text()) for path in (output / "runs").glob("*.json")]
    for source in ("c4", "gsm8k"):
        held_apart = domain_split(source, data).hashes
        assert held_apart
        for record in (r for r in records if r["calibration"] == source):
            used = _calibration_row_hashes(record, source, data)
            assert used and not used & held_apart, source
    # C4 has no separate split: the study calibrated on the rows left after holding a quarter apart ...
    c4_run = next(r for r in records if r["calibration"] == "c4")
    assert c4_run["calibration_fingerprint"]["sources"][0]["files"][0].endswith("held_apart/c4.jsonl")
    # ... whereas the source's own file does hold the evaluated rows (what the check above protects against).
    own = make_source("c4").load_records(LoadRequest(data_dir=str(data)), "plain")[0]
    assert {text_sha256(row["text"]) for row in own} & domain_split("c4", data).hashes
    # GSM8K's test file repeats three training rows; they are not evaluated.
    split = domain_split("gsm8k", data)
    assert len(split.texts) == 30 and "3 rows shared with calibration dropped" in split.description


def test_matrix_csv_is_source_by_domain_with_changes_against_the_baseline(study):
    output, _ = study
    rows = _csv(output / "matrix.csv")
    assert [(row["method"], row["calibration"]) for row in rows] == [("dense", "-"), ("wanda", "c4"), ("wanda", "gsm8k")]
    for domain in ("wikitext2", "gsm8k", "c4"):
        assert all(float(row[domain]) > 1 for row in rows)
        baseline = next(row for row in rows if row["calibration"] == "c4")
        assert float(baseline[f"{domain} change %"]) == 0.0 and baseline[f"{domain} verdict"] == "baseline"
        other = next(row for row in rows if row["calibration"] == "gsm8k")
        assert other[f"{domain} verdict"] in ("better", "worse", "not distinguishable")
    assert (output / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_languages_csv_is_calibration_language_by_evaluation_language(study):
    output, _ = study
    rows = _csv(output / "languages.csv")
    assert [row["calibration_language"] for row in rows] == ["-", "en", "de"]
    assert all(float(row[language]) > 1 for row in rows for language in ("en", "de"))
    results = _csv(output / "results.csv")
    dense = next(row for row in results if row["kind"] == "dense")
    assert float(dense["ppl:ud@de/ppl"]) == pytest.approx(float(rows[0]["de"]), rel=1e-3)
    assert "## Calibration language (PUD perplexity)" in (output / "results.md").read_text(encoding="utf-8")
    assert (output / "languages.png").read_bytes()[:4] == b"\x89PNG"


def test_a_task_at_chance_is_flagged_and_left_out_of_the_average():
    def record(method, scores_a, scores_b, seed=None):
        results = {
            "lm-eval:boolq": {"acc": sum(scores_a) / len(scores_a), "scores": scores_a, "choices": 2},
            "lm-eval:arc_easy": {"acc": sum(scores_b) / len(scores_b), "scores": scores_b, "choices": 4},
        }
        metrics = {f"{task}/acc": value["acc"] for task, value in results.items()}
        return {"method": method, "calibration": "-" if method == "dense" else "c4", "format": "plain", "seed": seed,
                "status": "ok", "results": results, "metrics": metrics, "run_id": method, "sparsity": 0.5, "pattern": "unstructured"}

    dense = record("dense", [1] * 45 + [0] * 55, [1] * 70 + [0] * 30)  # boolq 0.45 (chance 0.5), arc 0.70 (chance 0.25)
    levels = chance_levels(group_cells([dense])[0])
    assert levels["lm-eval:boolq"]["at_chance"] and not levels["lm-eval:arc_easy"]["at_chance"]
    from hf_calibprune.study.outputs import write_outputs

    pruned = record("wanda", [1] * 40 + [0] * 60, [1] * 60 + [0] * 40, seed=0)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_outputs([dense, pruned], folder)
        markdown = open(f"{folder}/results.md", encoding="utf-8").read()
        rows = _csv(f"{folder}/results.csv")
    assert "lm-eval:boolq/acc (at chance)" in markdown and "no (flagged, left out of averages)" in markdown
    # The average holds arc_easy only.
    assert float(rows[1]["zero-shot average/acc"]) == pytest.approx(0.60)
    assert float(rows[0]["zero-shot average/acc"]) == pytest.approx(0.70)


def test_a_languages_only_study_runs_no_source_grid(study, tmp_path, capsys):
    _, data = study
    model = data.parent / "model"
    output = tmp_path / "out"
    argv = ["study", "--model", str(model), "--languages", "en,de", "--num-samples", "2", "--seq-len", "16", "--limit", "2",
            "--data-dir", str(data), "--output", str(output)]
    assert main(argv) == 0
    rows = _csv(output / "results.csv")
    assert [(row["kind"], row["calibration"]) for row in rows] == [("dense", "-"), ("language", "ud@en"), ("language", "ud@de")]
    assert [row["calibration_language"] for row in _csv(output / "languages.csv")] == ["-", "en", "de"]
    assert not (output / "matrix.csv").exists()
    capsys.readouterr()
    code = main(["study", "--model", str(model), "--calibration", "c4", "--baseline", "gsm8k", "--data-dir", str(data), "--output", str(output)])
    assert code == 2 and "the baseline must be a cell of the grid" in capsys.readouterr().err
