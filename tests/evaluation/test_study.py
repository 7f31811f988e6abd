"""`hf-calibprune study` end to end on a tiny saved model: tables, plots, resume from the run cache."""

from __future__ import annotations

import csv

import pytest

from hf_calibprune.cli import main
from hf_calibprune.study import StudySettings, plan_study
from hf_calibprune.study.outputs import summarize


@pytest.fixture()
def saved_model(tmp_path, model, tokenizer):
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _study(saved_model, data_dir, output, capsys):
    argv = [
        "study", "--model", str(saved_model), "--methods", "wanda",
        "--sparsity", "0.5", "--calibration", "c4,gsm8k", "--formats", "icl", "--eval", "wikitext2",
        "--num-samples", "4", "--seq-len", "32", "--limit", "2", "--data-dir", str(data_dir), "--output", str(output),
    ]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out


def test_study_end_to_end_and_resume(saved_model, small_data_dir, tmp_path, capsys):
    output = tmp_path / "out"
    code, out = _study(saved_model, small_data_dir, output, capsys)
    assert code == 0, out
    assert "pruned 2 run(s), reused 0 cached run(s)" in out

    with open(output / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["dense", "wanda", "wanda"]
    by_source = {row["calibration"]: row for row in rows}
    # icl does not apply to c4 (pre-training text): it falls back to plain and says so.
    assert by_source["c4"]["format"] == "plain" and by_source["c4"]["requested_format"] == "icl"
    assert by_source["gsm8k"]["format"] == "icl"
    for row in rows[1:]:
        assert float(row["overall_sparsity"]) == pytest.approx(0.5, abs=0.01)
        assert float(row["wikitext2/ppl"]) > 1
    # Pruning changes the model: the pruned perplexities are not the dense one.
    assert float(by_source["c4"]["wikitext2/ppl"]) != float(rows[0]["wikitext2/ppl"])
    assert "format 'icl' does not apply" in (output / "summary.txt").read_text(encoding="utf-8")
    markdown = (output / "results.md").read_text(encoding="utf-8")
    runs_table = markdown.split("## Runs\n\n", 1)[1]
    assert runs_table.startswith("| run_id |") and runs_table.count("\n| ") == 3  # header, then dense and two pruned rows
    assert markdown.startswith("## Cells")
    png = output / "wikitext2_ppl.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cached = sorted((output / "runs").glob("*.json"))
    assert len(cached) == 3
    mtimes = {path.name: path.stat().st_mtime_ns for path in cached}
    code, out = _study(saved_model, small_data_dir, output, capsys)
    assert code == 0, out
    assert "pruned 0 run(s), reused 3 cached run(s)" in out
    assert {path.name: path.stat().st_mtime_ns for path in (output / "runs").glob("*.json")} == mtimes
    with open(output / "results.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == rows


def test_plan_skips_duplicates_and_keys_change_with_settings(small_data_dir):
    settings = StudySettings(
        model="m", calibration=("c4", "gsm8k"), formats=("plain", "icl"), eval=("wikitext2",),
        num_samples=4, seq_len=32, data_dir=str(small_data_dir),
    )
    plan = plan_study(settings)
    cells = [(run.method, run.calibration, run.format) for run in plan.runs]
    assert cells == [("dense", "-", "-"), ("wanda", "c4", "plain"), ("wanda", "gsm8k", "plain"), ("wanda", "gsm8k", "icl")]
    other = plan_study(StudySettings(**{**settings.__dict__, "num_samples": 8}))
    assert plan.runs[0].run_id == other.runs[0].run_id  # the dense baseline does not depend on calibration
    assert plan.runs[1].run_id != other.runs[1].run_id


def test_a_format_a_source_cannot_take_is_skipped_unless_it_takes_none(small_data_dir):
    # gsm8k has worked rationales (cot), mawps has none, and c4 takes only plain text.
    settings = StudySettings(
        model="m", methods=("wanda", "sparsegpt"), calibration=("c4", "gsm8k", "mawps"), formats=("zero", "icl", "cot"),
        eval=("wikitext2",), num_samples=4, seq_len=32, data_dir=str(small_data_dir),
    )
    plan = plan_study(settings)
    cells = [(run.method, run.calibration, run.format, run.requested_format) for run in plan.runs[1:]]
    wanda = [("c4", "plain", "zero"), ("gsm8k", "zero", "zero"), ("gsm8k", "icl", "icl"), ("gsm8k", "cot", "cot"),
             ("mawps", "zero", "zero"), ("mawps", "icl", "icl")]  # no plain twin of mawps' icl for its missing cot
    assert cells == [("wanda", *cell) for cell in wanda] + [("sparsegpt", *cell) for cell in wanda]
    assert any(note.startswith("mawps: format 'cot' does not apply") and note.endswith("skipped.") for note in plan.notes)
    assert any(note.startswith("c4: formats 'zero', 'icl', 'cot' do not apply") and note.endswith("using 'plain'.")
               for note in plan.notes)


def test_summary_names_the_best_choice_per_metric():
    records = [
        {"run_id": "d", "method": "dense", "status": "ok", "metrics": {"w/ppl": 10.0, "g/acc": 0.5}},
        {"run_id": "a", "method": "wanda", "calibration": "c4", "format": "plain", "status": "ok", "metrics": {"w/ppl": 12.0, "g/acc": 0.2}},
        {"run_id": "b", "method": "wanda", "calibration": "gsm8k", "format": "icl", "status": "ok", "metrics": {"w/ppl": 13.0, "g/acc": 0.4}},
    ]
    records[1]["calibration_fingerprint"] = records[2]["calibration_fingerprint"] = {"token_sha256": "ab" * 32}
    text = summarize(records)
    assert "c4 (plain) and gsm8k (icl) calibrated on identical tokens" in text
    assert "w/ppl: lowest mean c4 (plain), wanda = 12.0000" in text
    assert "g/acc: highest mean gsm8k (icl), wanda = 0.4000" in text


def test_bad_settings_fail_before_anything_runs(small_data_dir):
    from hf_calibprune.errors import CalibPruneError

    base = dict(model="m", eval=("wikitext2",), num_samples=4, seq_len=32, data_dir=str(small_data_dir))
    with pytest.raises(CalibPruneError, match="wandaa|Unknown"):
        plan_study(StudySettings(methods=("wandaa",), **base))
    with pytest.raises(CalibPruneError, match="c5|Unknown"):
        plan_study(StudySettings(calibration=("c5",), **base))
    with pytest.raises(CalibPruneError, match="sparsity"):
        plan_study(StudySettings(sparsity=1.5, **base))


def test_a_spent_time_budget_starts_no_run_and_a_later_call_resumes(saved_model, small_data_dir, tmp_path):
    import time

    from hf_calibprune.study import run_study

    settings = StudySettings(
        model=str(saved_model), calibration=("c4",), eval=("wikitext2",), num_samples=4, seq_len=32, limit=2,
        seeds=(0, 1), data_dir=str(small_data_dir),
    )
    spent = run_study(settings, tmp_path / "out", deadline=time.monotonic() - 1)
    assert (spent.pruned, spent.skipped, spent.records) == (0, 3, [])
    assert "3 of 3 runs were not started because the time budget would have run out" in (tmp_path / "out" / "summary.txt").read_text()
    resumed = run_study(settings, tmp_path / "out", deadline=time.monotonic() + 3600)
    assert (resumed.pruned, resumed.skipped) == (2, 0)
    assert [record["seed"] for record in resumed.records] == [None, 0, 1]


def test_a_budget_shorter_than_the_cached_dense_run_starts_no_pruned_run(saved_model, small_data_dir, tmp_path):
    """A tables-only call (a tiny budget) on a study whose dense run is cached must not start pruning: the dense
    run's time is a lower bound of a pruned run's, which evaluates the same tasks."""
    import json
    import time

    from hf_calibprune.study import run_study

    settings = StudySettings(
        model=str(saved_model), calibration=("c4",), eval=("wikitext2",), num_samples=4, seq_len=32, limit=2,
        seeds=(0,), data_dir=str(small_data_dir),
    )
    first = run_study(settings, tmp_path / "out", deadline=time.monotonic() + 3600)
    assert first.pruned == 1
    runs = tmp_path / "out" / "runs"
    for path in runs.glob("wanda-*.json"):
        path.unlink()
    (dense_path,) = runs.glob("dense-*.json")
    dense = json.loads(dense_path.read_text())
    dense["eval_seconds"] = 60.0
    dense_path.write_text(json.dumps(dense))
    tables_only = run_study(settings, tmp_path / "out", deadline=time.monotonic() + 30)
    assert (tables_only.pruned, tables_only.reused, tables_only.skipped) == (0, 1, 1)
