"""``hf-calibprune study``: prune with every calibration choice of a grid, evaluate, tabulate and plot.

```
hf-calibprune study --model DIR --methods wanda --sparsity 0.5 --calibration c4,gsm8k,race,self \\
    --formats plain,icl,cot --seeds 0,1,2 --baseline c4 --eval wikitext2,ppl:gsm8k,ppl:race,ppl:c4 \\
    --languages en,de,fr --num-samples 32 --seq-len 256 --limit 16 --data-dir ../shared/data --output study_out
```
"""

from __future__ import annotations

import argparse
import time

__all__ = ["add_parser", "run"]


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, not {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "study",
        help="Compare calibration sources and formats: prune, evaluate, write CSV/markdown/plots.",
        description=(
            "Runs methods x calibration sources x formats x seeds (a format a source cannot take is skipped; a "
            "source that takes none runs once in plain), a fresh model per run, plus a dense baseline, and with "
            "--languages one cell per calibration language. "
            "Each run's result is cached in OUTPUT/runs/, so an interrupted study resumes. Writes OUTPUT/results.csv "
            "(one row per run and seed), results.md (mean, sd and 95%% intervals; paired comparisons with the "
            "baseline), matrix.csv/png (calibration source x evaluation domain), languages.csv/png, one PNG per "
            "metric and summary.txt."
        ),
    )
    parser.add_argument("--model", required=True, help="Model directory (or Hub id).")
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside --model to load (dequantized once).")
    parser.add_argument("--methods", type=_names, default=("wanda",), help="Comma-separated methods (default: wanda).")
    parser.add_argument("--sparsity", type=float, default=0.5, help="Target sparsity (default: 0.5).")
    parser.add_argument("--pattern", default="unstructured", help="unstructured, N:M such as 2:4, or channels, blocks, experts (default: unstructured).")
    parser.add_argument(
        "--calibration",
        type=_names,
        default=None,
        help="Comma-separated calibration sources (default: c4; none when only --languages is given).",
    )
    parser.add_argument("--formats", type=_names, default=("plain",), help="Comma-separated formats: plain,icl,cot,...")
    parser.add_argument(
        "--eval",
        type=_names,
        default=None,
        help="Comma-separated evaluation tasks (default: wikitext2; none when only --languages is given); ppl:SOURCE is perplexity on a calibration source's held-apart text "
        "(ppl:gsm8k,ppl:race,ppl:c4), lm-eval:zeroshot the harness tasks.",
    )
    parser.add_argument("--num-samples", type=int, default=128, help="Calibration sequences per run (default: 128).")
    parser.add_argument("--seq-len", type=int, default=2048, help="Calibration sequence length (default: 2048).")
    parser.add_argument("--eval-seq-len", type=int, default=None, help="Perplexity window (default: --seq-len).")
    parser.add_argument("--limit", type=int, default=None, help="Evaluation windows / examples per task.")
    parser.add_argument("--seeds", type=_seeds, default=None, help="Comma-separated calibration seeds (default: 0).")
    parser.add_argument("--seed", type=int, default=None, help="One calibration seed (same as --seeds N).")
    parser.add_argument("--baseline", default=None, help="Calibration source compared with (default: the first).")
    parser.add_argument(
        "--languages", type=_names, default=(), help="Calibration languages (en,de,...): the language x language matrix."
    )
    parser.add_argument(
        "--language-source",
        default="ud",
        help="Source of the language cells: ud (local UD text, default), c4, oscar or wikipedia (Hub).",
    )
    parser.add_argument("--device", default=None, help="Device for pruning and evaluation (e.g. cuda).")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="Time budget: no run starts that would end after it (judged by the longest run so far); the outputs "
        "hold what finished and a rerun resumes the rest.",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Evaluation batch size (default: 8).")
    parser.add_argument("--data-dir", default=None, help="Local data mirror laid out as <source>/<files>.")
    parser.add_argument("--output", required=True, help="Output directory.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..study import StudySettings, run_study

    if args.seeds is not None and args.seed is not None:
        raise SystemExit("error: pass --seeds or --seed, not both")
    seeds = args.seeds if args.seeds is not None else (args.seed if args.seed is not None else 0,)
    languages_only = bool(args.languages) and args.calibration is None
    calibration = () if languages_only else (args.calibration or ("c4",))
    evaluation = args.eval if args.eval is not None else (() if languages_only else ("wikitext2",))

    settings = StudySettings(
        model=args.model,
        methods=args.methods,
        sparsity=args.sparsity,
        pattern=args.pattern,
        calibration=calibration,
        formats=args.formats,
        eval=evaluation,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        eval_seq_len=args.eval_seq_len,
        limit=args.limit,
        seeds=seeds,
        baseline=args.baseline,
        languages=args.languages,
        language_source=args.language_source,
        device=args.device,
        data_dir=args.data_dir,
        gguf_file=args.gguf_file,
        batch_size=args.batch_size,
    )
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    result = run_study(settings, args.output, deadline=deadline)
    print(result.files["markdown"].read_text(encoding="utf-8"))
    print(f"pruned {result.pruned} run(s), reused {result.reused} cached run(s), {result.failed} failed, "
          f"{result.skipped} not started (time budget); outputs in {args.output}")
    return 1 if result.failed else 0
