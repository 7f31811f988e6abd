"""Local evaluation data: where the files are, how they are read, and the error when one is missing.

Evaluation reads offline copies laid out as ``<data_dir>/<source name>/<files>`` (the layout of the
shared data mirror, see its ``SOURCES.md``). ``data_dir`` comes from the argument, else the
``HF_CALIBPRUNE_DATA_DIR`` environment variable, else ``<repo>/../shared/data`` when it exists.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import CalibPruneError

__all__ = [
    "EvaluationError",
    "DATA_DIR_ENV",
    "resolve_data_dir",
    "find_data_file",
    "read_records",
]

DATA_DIR_ENV = "HF_CALIBPRUNE_DATA_DIR"


class EvaluationError(CalibPruneError):
    """Evaluation data is missing or malformed, or an evaluation task was asked for that does not exist."""


def _default_data_dir() -> Path | None:
    candidate = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return candidate.resolve() if candidate.is_dir() else None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the local data mirror to read from, or `None` when there is none.

    Args:
        data_dir (`str` or `os.PathLike`, *optional*):
            Explicit directory; must exist. Without it, ``$HF_CALIBPRUNE_DATA_DIR`` and then
            ``<repo>/../shared/data`` are tried.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise EvaluationError(
                f"data_dir '{path}' is not a directory. Pass a local mirror laid out as "
                "'<source name>/<files>' (for example ../shared/data)."
            )
        return path
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return resolve_data_dir(env)
    return _default_data_dir()


def find_data_file(
    data_dir: str | os.PathLike | None, source: str, patterns: Iterable[str], *, what: str
) -> Path:
    """Return the first file under ``<data_dir>/<source>/`` matching one of ``patterns`` (globs, in order).

    Raises:
        `EvaluationError`: naming the directory, the patterns tried and how to supply the file.
    """
    patterns = list(patterns)
    root = resolve_data_dir(data_dir)
    if root is None:
        raise EvaluationError(
            f"{what} needs a local copy of '{source}' ({' or '.join(patterns)}) but no data directory was given. "
            f"Pass data_dir=/--data-dir DIR (laid out as '<source name>/<files>') or set ${DATA_DIR_ENV}."
        )
    folder = root / source
    for pattern in patterns:
        matches = sorted(p for p in folder.glob(pattern) if p.is_file())
        if matches:
            return matches[0]
    raise EvaluationError(
        f"{what} needs '{folder}/' with a file matching {' or '.join(repr(p) for p in patterns)}, "
        f"which was not found. Put the file there or pass another data_dir."
    )


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read JSON Lines, a JSON array (``.json`` files that are one array) or a TSV file into dicts."""
    path = Path(path)
    if path.suffix == ".tsv":
        with open(path, encoding="utf-8", newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle, delimiter="\t")]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise EvaluationError(f"'{path}' looks like a JSON array but does not parse: {error}.") from error
        return list(records)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EvaluationError(f"'{path}' line {number} is not valid JSON: {error}.") from error
    return records
