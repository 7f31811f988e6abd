"""``hf-calibprune calibration``: list the calibration sources, or show what the model would see."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``calibration list`` and ``calibration show``."""
    parser = subparsers.add_parser(
        "calibration",
        help="List calibration sources or print rendered calibration samples.",
        description="List calibration sources (list) or print the text a source renders to (show).",
    )
    actions = parser.add_subparsers(dest="calibration_action", required=True, metavar="ACTION")
    actions.add_parser("list", help="Print every registered source with its kind, formats and rationales.")
    show = actions.add_parser("show", help="Print rendered samples of a source.")
    show.add_argument("source", help="Registered name (gsm8k, gsm8k:cot, ...), local file or Hub dataset id.")
    show.add_argument("--format", "-f", default=None, help="plain, zero, single, icl or cot.")
    show.add_argument("-n", "--num", type=int, default=2, help="How many samples to print (default 2).")
    show.add_argument("--data-files", nargs="+", default=None, metavar="PATH", help="Local files in the raw schema.")
    show.add_argument("--data-dir", default=None, help="Local mirror laid out as DIR/<source>/<files>.")
    show.add_argument("--shots", type=int, default=None, help="Examples per sample (icl/cot).")
    show.add_argument("--seed", type=int, default=0, help="Seed of the example draw (default 0).")
    show.add_argument("--text-field", default=None, help="Text column of a custom file or dataset.")
    show.add_argument("--template", default=None, help="str.format template over the columns.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch ``list`` or ``show``; returns the exit code."""
    if args.calibration_action == "list":
        return _list()
    return _show(args)


def _list() -> int:
    from hf_calibprune.calibration import SOURCES

    rows = []
    for name in SOURCES.names():
        cls = SOURCES.get(name)
        cot = "cot: yes" if cls.has_rationales() else "cot: no"
        hub = cls.hub.path if getattr(cls, "hub", None) is not None else "-"
        rows.append((name, cls.kind, ",".join(cls.supported_formats()), cot, hub, cls.description))
    width = max(len(row[0]) for row in rows)
    for name, kind, formats, cot, hub, description in rows:
        print(f"{name:<{width}}  {kind:<11} {cot:<8}  formats={formats:<25} hub={hub:<38} {description}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from hf_calibprune.calibration import render_samples

    texts = render_samples(
        args.source,
        args.format,
        args.num,
        data_files=args.data_files,
        data_dir=args.data_dir,
        shots=args.shots,
        seed=args.seed,
        text_field=args.text_field,
        template=args.template,
    )
    label = args.source if args.format is None else f"{args.source.split(':')[0]}:{args.format}"
    for index, text in enumerate(texts, start=1):
        print(f"===== {label} sample {index}/{len(texts)} =====")
        print(text)
    return 0
