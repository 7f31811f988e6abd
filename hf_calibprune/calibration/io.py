"""Reading calibration data: local files in their raw schema, local mirrors, and the Hub (with offline errors)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import socket
import string
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from ..errors import CalibrationError

__all__ = [
    "DATA_DIR_ENV",
    "HubSpec",
    "read_records",
    "read_files",
    "resolve_data_dir",
    "find_local_files",
    "load_hub_records",
    "hub_offline_reason",
    "template_fields",
    "render_template",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "HF_CALIBPRUNE_DATA_DIR"
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubSpec:
    """Where a source lives on the Hugging Face Hub.

    Args:
        path (`str`): dataset id passed to ``datasets.load_dataset``.
        name (`str`, *optional*): dataset config.
        split (`str`, *optional*, defaults to `"train"`): split read.
        revision (`str`, *optional*): pinned commit.
        data_files (`dict[str, str]`, *optional*): files inside the repo (e.g. the one C4 shard).
        streaming (`bool`, *optional*, defaults to `False`): stream instead of downloading the split.
        max_rows (`int`, *optional*): read only the first rows (the study's ``split="train[:5000]"``).
        study_id (`str`, *optional*): how the study's code spelled the id, where it differs.
    """

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: dict[str, str] | None = None
    streaming: bool = False
    max_rows: int | None = None
    study_id: str | None = None

    def describe(self) -> str:
        parts = [self.path]
        if self.name:
            parts.append(f"config '{self.name}'")
        parts.append(f"split '{self.split}'")
        if self.data_files:
            parts.append(f"files {sorted(self.data_files.values())}")
        if self.revision:
            parts.append(f"revision {self.revision[:12]}")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------------
def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return handle.read()
    return path.read_text(encoding="utf-8")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read one local data file into a list of row dicts, keeping its raw schema.

    ``.jsonl``/``.json`` (JSON lines, a JSON array of objects or strings, or one object; ``.gz`` too),
    ``.tsv``/``.csv`` (header row), ``.parquet``, and anything else as one text document ``{"text": ...}``.
    Strings in a JSON array become ``{"text": s}``.

    Raises:
        `CalibrationError`: the file is missing or unreadable.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CalibrationError(f"Calibration file '{path}' does not exist (or is not a file).")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if name.endswith((".tsv", ".csv", ".tsv.gz", ".csv.gz")):
            delimiter = "\t" if ".tsv" in name else ","
            return [dict(row) for row in csv.DictReader(io.StringIO(_open_text(path)), delimiter=delimiter)]
        if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
            return _parse_json_rows(_open_text(path), path)
        return [{"text": _open_text(path)}]
    except CalibrationError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
        raise CalibrationError(f"Could not read calibration file '{path}': {error}") from error


def _parse_json_rows(text: str, path: Path) -> list[dict[str, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            return [_as_row(item) for item in data]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_as_row(json.loads(line)))
        except json.JSONDecodeError:
            if number == 1 and stripped.startswith("{"):
                data = json.loads(text)  # one (pretty-printed) object; raises a clear ValueError if broken
                return [_as_row(data)]
            raise CalibrationError(f"Line {number} of '{path}' is not valid JSON: {line[:80]!r}") from None
    return rows


def _as_row(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    if isinstance(item, str):
        return {"text": item}
    raise CalibrationError(f"Expected JSON objects or strings as rows, got {type(item).__name__}: {str(item)[:80]!r}")


def read_files(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read and concatenate the rows of several local files (a directory reads its data files, sorted)."""
    rows: list[dict[str, Any]] = []
    for path in expand_paths(paths):
        rows.extend(read_records(path))
    return rows


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand directories into their data files (sorted, non-recursive); check that files exist."""
    from .config import DATA_EXTENSIONS

    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(DATA_EXTENSIONS))
            if not found:
                raise CalibrationError(
                    f"Directory '{path}' holds no data files ({', '.join(DATA_EXTENSIONS)}); "
                    "pass the files themselves."
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise CalibrationError(f"Calibration file '{path}' does not exist.")
    return out


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The local mirror to read: ``data_dir``, else ``$HF_CALIBPRUNE_DATA_DIR``, else ``<repo>/../shared/data``.

    Raises:
        `CalibrationError`: an explicitly given directory does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise CalibrationError(
                f"data_dir '{path}' is not a directory. Pass a local mirror laid out as "
                "'<data_dir>/<source name>/<files>'."
            )
        return path
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise CalibrationError(f"${DATA_DIR_ENV}='{env}' is not a directory; unset it or fix the path.")
        return path
    # The checkout layout of this project keeps the shared offline mirror next to the repository.
    candidate = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return candidate.resolve() if candidate.is_dir() else None


def find_local_files(root: Path | None, dirs: Iterable[str], patterns: Iterable[str]) -> list[Path] | None:
    """The files of the first pattern that matches in the first existing ``root/<dir>``, else `None`."""
    if root is None:
        return None
    for name in dirs:
        folder = root / name
        if not folder.is_dir():
            continue
        for pattern in patterns:
            matches = sorted(p for p in folder.glob(pattern) if p.is_file())
            if matches:
                return matches
    return None


# --------------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------------
def hub_offline_reason() -> str | None:
    """Why the Hub cannot be used right now (offline env var or unreachable endpoint), or `None`."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; a direct probe would be wrong
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as error:
        return f"the Hub ({host}) is unreachable: {error}"


def _local_copy_hint(source: str, local_dirs: Iterable[str], patterns: Iterable[str]) -> str:
    dirs = list(local_dirs) or [source]
    pats = list(patterns) or ["*.jsonl"]
    return (
        f"Pass a local copy instead: CalibrationConfig(sources='{source}', data_files='PATH') "
        f"(--data-files PATH), or data_dir=DIR laid out as DIR/{dirs[0]}/{pats[0]} "
        f"(--data-dir DIR, or ${DATA_DIR_ENV}=DIR)."
    )


def load_hub_records(
    spec: HubSpec,
    *,
    source: str,
    revision: str | None = None,
    local_dirs: Iterable[str] = (),
    patterns: Iterable[str] = (),
    max_rows: int | None = None,
    hint: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load rows of a Hub dataset with ``datasets.load_dataset``; fail fast and clearly when offline.

    Returns:
        ``(rows, origin)`` where ``origin`` is the fingerprint entry (id, config, split, revision).

    Raises:
        `CalibrationError`: offline, unreachable, or the load failed; the message names the dataset and
        how to pass a local copy.
    """
    revision = revision or spec.revision
    what = spec.describe() if revision == spec.revision else f"{spec.describe()} at revision {revision}"
    hint = hint or _local_copy_hint(source, local_dirs, patterns)
    reason = hub_offline_reason()
    if reason is not None:
        raise CalibrationError(f"Calibration source '{source}' needs the Hub dataset {what}, but {reason}. {hint}")
    import datasets

    limit = max_rows if max_rows is not None else spec.max_rows
    kwargs: dict[str, Any] = {"split": spec.split}
    if spec.name:
        kwargs["name"] = spec.name
    if revision:
        kwargs["revision"] = revision
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    streaming = spec.streaming or limit is not None
    try:
        dataset = datasets.load_dataset(spec.path, streaming=streaming, **kwargs)
        rows = [dict(row) for row in (islice(dataset, limit) if limit is not None else dataset)]
    except Exception as error:  # noqa: BLE001 - every failure becomes one clear message
        raise CalibrationError(
            f"Could not load the Hub dataset {what} for calibration source '{source}': "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}. {hint}"
        ) from error
    origin = {
        "origin": "hub",
        "hub_id": spec.path,
        "config": spec.name,
        "split": spec.split,
        "revision": revision,
        "data_files": spec.data_files,
        "max_rows": limit,
        "rows": len(rows),
    }
    return rows, origin


# --------------------------------------------------------------------------------------------------
# Templates and fields
# --------------------------------------------------------------------------------------------------
def template_fields(template: str) -> list[str]:
    """Top-level column names a ``str.format`` template refers to."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        root = name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            from .config import CalibrationConfigError

            raise CalibrationConfigError(
                f"`template` {template!r} uses a positional field '{{{name}}}'; name columns instead, "
                "e.g. '{question}'."
            )
        if root not in names:
            names.append(root)
    return names


def render_template(template: str, rows: list[dict[str, Any]], *, where: str) -> list[str]:
    """Render every row through ``template``; a missing column is an error naming the columns that exist."""
    wanted = template_fields(template)
    columns = _columns(rows)
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise CalibrationError(
            f"Template {template!r} names column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}, which {where} does not have. "
            f"Columns: {', '.join(sorted(columns)) or '(none)'}."
        )
    return [template.format_map(row) for row in rows]


def texts_from_field(rows: list[dict[str, Any]], text_field: str, *, where: str) -> list[str]:
    """The values of ``text_field``; errors name the columns when it is missing, or say it is empty."""
    columns = _columns(rows)
    if text_field not in columns:
        raise CalibrationError(
            f"{where} has no column '{text_field}'. Columns: {', '.join(sorted(columns)) or '(none)'}. "
            "Pass text_field=COLUMN (--text-field) or a template such as '{question} {answer}'."
        )
    texts = ["" if row.get(text_field) is None else str(row.get(text_field)) for row in rows]
    if not any(text.strip() for text in texts):
        raise CalibrationError(
            f"Column '{text_field}' of {where} is empty in all {len(rows)} rows; point text_field at a column "
            "with text."
        )
    return texts


def _columns(rows: list[dict[str, Any]]) -> set[str]:
    columns: set[str] = set()
    for row in rows[:1000]:
        columns.update(row)
    return columns
