"""Small file helpers: atomic JSON writes and JSON reads with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["write_json_atomic", "read_json"]


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON to a temporary sibling, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, raising :class:`CheckpointError` naming ``what`` when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found at {path}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{what} at {path} is corrupted or truncated ({error}); restore it or prune again."
        ) from error
