"""``hf-calibprune evaluate DIR_OR_ID --tasks wikitext2,gsm8k``: perplexity and accuracy of a (pruned) model.

Prints a table; when DIR holds a ``pruning_report.json`` the results are merged into its ``evaluation``
field, and into the model-index of DIR/README.md when there is one (temporary sibling, then rename).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="Evaluate a model: perplexity, the study's few-shot accuracy, lm-eval zero-shot tasks.",
        description=(
            "Evaluate a model directory or Hub id. Tasks: wikitext2, c4, ppl:PATH (perplexity); gsm8k, svamp, "
            "mawps, anli_r1, esnli, rte, boolq, commonsense_qa, race, winogrande (few-shot generation, NAME:cot "
            "for chain of thought); lm-eval:NAME or lm-eval:zeroshot (lm-evaluation-harness)."
        ),
    )
    parser.add_argument("model", metavar="DIR_OR_ID", help="Model directory (or Hub id) to evaluate.")
    parser.add_argument("--tasks", default="wikitext2", help="Comma-separated tasks (default: wikitext2).")
    parser.add_argument("--limit", type=int, default=None, help="Windows / examples per task.")
    parser.add_argument("--data-dir", default=None, help="Local data mirror laid out as <source>/<files>.")
    parser.add_argument("--seq-len", type=int, default=None, help="Perplexity window length (default: min(2048, model max)).")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generation batch (default: 8).")
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside DIR to load (dequantized).")
    parser.add_argument("--output", default=None, help="Also write the results as JSON to this file.")
    parser.add_argument(
        "--no-report", action="store_true", help="Do not write the results into DIR/pruning_report.json and DIR/README.md."
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from .._io import write_json_atomic
    from ..evaluation import evaluate_model, format_results_table, parse_tasks
    from ..evaluation.checkpoint import record_evaluation
    from ..models.loading import load_model_and_tokenizer

    parse_tasks(args.tasks)  # fail on a bad task name before loading the model
    model, tokenizer = load_model_and_tokenizer(
        args.model, gguf_file=args.gguf_file, dtype=torch.float32, require_tokenizer=True
    )
    results = evaluate_model(
        model,
        tokenizer,
        args.tasks,
        data_dir=args.data_dir,
        limit=args.limit,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    print(format_results_table(results))
    if args.output:
        write_json_atomic(args.output, results)
    if not args.no_report and Path(args.model).is_dir():
        record_evaluation(args.model, results)
    return 0
