"""Write a whole directory atomically: build it in a temporary sibling, then rename it into place.

A save that dies half way (exception, SIGKILL, full disk) leaves the previous target untouched; the
temporary sibling it leaves behind carries the writer's process id and is removed by the next save into the
same parent once that process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import CheckpointError

__all__ = ["atomic_directory", "check_target"]

logger = logging.getLogger(__name__)

_TMP_TAG = ".hf_calibprune-tmp-"
_OLD_TAG = ".hf_calibprune-old-"


def check_target(target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``target`` as a :class:`Path` after checking that a save may write it.

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: ``target`` is a file, or a non-empty directory and
            ``overwrite`` is ``False``, or its parent cannot be written.
    """
    path = Path(target).expanduser()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"'{path}' is a file, not a directory; pass a directory path to save the checkpoint in.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(
            f"'{path}' exists and is not empty. Pass overwrite=True (--overwrite) to replace it, or choose a new "
            "directory."
        )
    parent = path.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"Cannot write into '{existing}' (permission denied); choose a writable output directory.")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by writers that no longer run."""
    prefix_tmp, prefix_old = f".{path.name}{_TMP_TAG}", f".{path.name}{_OLD_TAG}"
    for sibling in path.parent.iterdir():
        for prefix in (prefix_tmp, prefix_old):
            if sibling.name.startswith(prefix):
                pid_text = sibling.name[len(prefix) :].split("-", 1)[0]
                if pid_text.isdigit() and not _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
                    logger.info("Removing '%s' left by an interrupted save.", sibling)
                    shutil.rmtree(sibling, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    """Flush file contents to disk before the rename makes them visible (best effort: not every FS allows it)."""
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on a clean exit it becomes ``target``.

    With ``overwrite=True`` an existing ``target`` is renamed aside, the new directory renamed in, and the
    old one deleted; if the second rename fails the old directory is put back. On any exception the
    temporary directory is removed and ``target`` is left as it was.

    Args:
        target (`str` or `os.PathLike`): the directory to produce.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty ``target``.

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: see :func:`check_target`.
    """
    path = check_target(target, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}{_TMP_TAG}{token}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        # Checked again: another writer may have filled the target while this one was writing.
        check_target(path, overwrite)
        if path.is_dir():
            old = path.parent / f".{path.name}{_OLD_TAG}{token}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
