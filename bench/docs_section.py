"""Replace one benchmark's generated section of a docs page, between its begin/end markers, atomically."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_section(name: str, body: str, heading: str | None = None, page: str = "benchmarks.md") -> Path:
    """Put ``body`` between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` of ``docs/{page}``.

    The markers are kept, so rerunning a benchmark replaces only its own section; a page without them gets the
    section appended, under ``heading`` (a Markdown heading line) when given.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = REPO / "docs" / page
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        text = head + block + rest.partition(end)[2]
    else:
        text = text.rstrip("\n") + (f"\n\n{heading}" if heading else "") + f"\n\n{block}\n"
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def command_table(command: str, header: list[str], rows: list[list[str]], text_columns: int) -> str:
    """``Command: `...` `` and a Markdown table; the first ``text_columns`` columns left-aligned, the rest right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = [f"Command: `{command}`", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
