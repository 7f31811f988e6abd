"""What a checkpoint publishes names no private path, and a last check refuses any that slipped through.

Everything written for the Hub (``README.md``, ``pruning_config.json``, ``pruning_report.json``, the command line
in the card) names a local file by its file name, with its size and sha256 listed in ``local_files``; a local
directory by its name; the model's local directory by ``base_model`` when given, else by its ``config.json``'s
``_name_or_path`` when that is a Hub id, else as "a local model" with the sha256 of its ``config.json``. On a shared
machine a path names users, projects and private data sets. What stays with the user (the in-memory
``model.pruning_report``, resume directories, logs) keeps full paths.

:func:`check_publishable` is the last look before :func:`~hf_calibprune.save_sparse` renames a checkpoint into
place and before :func:`~hf_calibprune.push_to_hub` uploads: it refuses, naming the file and the string, any
artifact that still holds the absolute (or ``~``-relative) path of a calibration file, a data directory, the model
directory or the user's home.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import CheckpointError

__all__ = [
    "LOCAL_MODEL",
    "OWN_FILES",
    "Publication",
    "check_publishable",
    "is_hub_id",
    "merge_local_files",
    "prepare_publication",
    "publishable",
    "private_paths",
]

logger = logging.getLogger(__name__)

#: How a published command line names the model's local directory when no Hub id is known.
LOCAL_MODEL = "<local model>"
#: The files hf_calibprune writes itself: they are also searched for any existing local path, known or not.
OWN_FILES = frozenset({"README.md", "pruning_config.json", "pruning_report.json"})

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# An absolute or ~-relative path inside text: it starts after a space, a quote or the start, never inside a URL
# ("https://x/y"), a Hub id ("org/name") or a fraction ("1/2"), and does not end in punctuation.
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/~\\-])(?:~/|/)[^\s'\"`|,;<>()\[\]{}]*[^\s'\"`|,;<>()\[\]{}.:]")
# Top-level directories whose paths name the system, not the user (``/usr/bin/env`` in a README is harmless).
_SYSTEM_ROOTS = frozenset({"usr", "bin", "sbin", "etc", "dev", "proc", "sys", "lib", "lib64", "run"})
_CHUNK = 1 << 20


def is_hub_id(value: Any) -> bool:
    """``True`` for ``"org/name"`` that is not also a local path."""
    return isinstance(value, str) and bool(HUB_ID_RE.match(value)) and not os.path.exists(value)


def _components(path: str) -> int:
    return len(Path(path).parts) - 1 if os.path.isabs(path) else 0


def _home() -> str | None:
    home = os.path.expanduser("~")
    return home if os.path.isabs(home) and _components(home) >= 1 else None


def _forms(path: str) -> set[str]:
    """The spellings of an absolute path a file could hold: as given, resolved, and ``~``-relative."""
    forms = {path, os.path.realpath(path)}
    home = _home()
    for form in list(forms):
        if home and form.startswith(home + os.sep):
            forms.add("~" + form[len(home) :])
    return {form for form in forms if _components(form) >= 2 or form.startswith("~" + os.sep)}


def private_paths(data_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, str]:
    """Strings no published file may hold, whatever was pruned: the user's home and the calibration data
    directories (``data_dirs``, ``$HF_CALIBPRUNE_DATA_DIR`` and the default mirror)."""
    private: dict[str, str] = {}
    home = _home()
    if home:
        for form in {home, os.path.realpath(home)}:
            private[form + os.sep] = "the home directory"
    directories = [os.fspath(d) for d in data_dirs if d]
    if os.environ.get("HF_CALIBPRUNE_DATA_DIR"):
        directories.append(os.environ["HF_CALIBPRUNE_DATA_DIR"])
    try:
        from ..calibration.io import resolve_data_dir

        default = resolve_data_dir(None)
    except Exception:  # noqa: BLE001 - an unreadable default mirror is no private path of this run
        default = None
    if default is not None:
        directories.append(os.fspath(default))
    for directory in directories:
        for form in _forms(os.path.abspath(os.path.expanduser(directory))):
            private[form] = "a calibration data directory"
    return private


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Publication:
    """The provenance of a checkpoint as it is published.

    Args:
        report (`dict`): the report with local paths replaced by names, plus ``local_files``.
        config (`dict`, *optional*): the config, likewise.
        command (`str`, *optional*): the command line, likewise (the model directory becomes ``base_model`` or
            :data:`LOCAL_MODEL`).
        base_model (`str`, *optional*): the Hub id of the pruned model, when one is known.
        model_label (`str`): how the card names the pruned model (a Hub id in backticks, "a local model" with the
            sha256 of its ``config.json``, or "the base model").
        local_files (`list[dict]`): ``{"name", "bytes", "sha256"}`` of every local file named.
        private (`dict[str, str]`): strings no published file may hold, with what they are (for
            :func:`check_publishable`).
    """

    report: dict[str, Any]
    config: dict[str, Any] | None = None
    command: str | None = None
    base_model: str | None = None
    model_label: str = "the base model"
    local_files: list[dict[str, Any]] = field(default_factory=list)
    private: dict[str, str] = field(default_factory=dict)


class _Scrubber:
    """Replaces local paths in JSON-like values by names, remembering each file's size and hash and each path."""

    def __init__(self, model_dir: str | None, model_token: str) -> None:
        self.model_dirs: set[str] = set()
        self.model_token = model_token
        self.files: dict[str, dict[str, Any]] = {}
        self.private: dict[str, str] = {}
        if model_dir and not is_hub_id(model_dir):
            absolute = os.path.abspath(os.path.expanduser(model_dir))
            self.model_dirs = {absolute, os.path.realpath(absolute)}
            for form in _forms(absolute):
                self.private[form] = "the model directory"

    def value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                name = self.text(key) if isinstance(key, str) else key
                unique, n = name, 2
                while unique in out:  # two files of one name (a/train.jsonl, b/train.jsonl) stay two keys
                    unique, n = f"{name} ({n})", n + 1
                out[unique] = self.value(item)
            return out
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, text: str) -> str:
        if _is_whole_path(text):
            return self.name(text)
        # Inside free text (calibration texts, messages) only paths into this machine's own directories are names.
        return _PATH_IN_TEXT.sub(
            lambda match: self.name(match.group(0)) if _is_private_location(match.group(0)) else match.group(0), text
        )

    def command(self, command: str) -> str:
        try:
            tokens = shlex.split(command)
        except ValueError:
            return self.text(command)
        out = []
        for token in tokens:
            flag, equals, value = token.partition("=")
            if token.startswith("-") and equals:
                out.append(f"{flag}={self.text(value)}")
            else:
                out.append(self.text(token))
        return shlex.join(out)

    def name(self, text: str) -> str:
        absolute = os.path.abspath(os.path.expanduser(text))
        if absolute in self.model_dirs or os.path.realpath(absolute) in self.model_dirs:
            return self.model_token
        path = Path(absolute)
        if not path.name:
            return text  # the root directory names nobody
        is_file = path.is_file()
        label = "a local file" if is_file else "a local directory" if path.is_dir() else "a local path"
        for form in _forms(absolute):
            self.private.setdefault(form, label)
        if is_file and absolute not in self.files:
            self.files[absolute] = {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
        return path.name


def _is_whole_path(text: str) -> bool:
    if not text or len(text) > 4096 or "\n" in text:
        return False
    if text.startswith(("/", "~/")):
        return os.path.exists(os.path.expanduser(text)) or not any(c.isspace() for c in text)
    if "/" in text or os.sep in text:
        return os.path.exists(text)
    return os.path.isfile(text)  # a bare file name, relative to the working directory


def _model_naming(base_model: str | None, model_dir: str | None) -> tuple[str | None, str]:
    """``(Hub id or None, how the card names the model)``."""
    if is_hub_id(base_model):
        return base_model, f"`{base_model}`"
    source = model_dir or base_model
    if not source:
        return None, "the base model"
    if is_hub_id(source):
        return source, f"`{source}`"
    config = Path(os.path.expanduser(source)) / "config.json"
    if not config.is_file():
        return None, "a local model"
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        name = None
    if is_hub_id(name):
        return name, f"`{name}`"
    return None, f"a local model (`config.json` sha256 `{_sha256(config)}`)"


def prepare_publication(
    report: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    *,
    command: str | None = None,
    base_model: str | None = None,
    model_dir: str | os.PathLike | None = None,
) -> Publication:
    """The published form of a checkpoint's provenance: local paths replaced by names (see the module docstring).

    Args:
        report (`dict`): the pruning report as a dict.
        config (`dict`, *optional*): the pruning config as a dict.
        command (`str`, *optional*): the command line that made the checkpoint.
        base_model (`str`, *optional*): Hub id of the pruned model (a local path is treated as its directory).
        model_dir (`str` or `os.PathLike`, *optional*): where the model was loaded from
            (``model.config.name_or_path``); a Hub id there is used when ``base_model`` is not given.

    Returns:
        :class:`Publication`
    """
    model_dir = os.fspath(model_dir) if model_dir else None
    if base_model and not is_hub_id(base_model) and not model_dir:
        model_dir = base_model
    hub_id, label = _model_naming(base_model, model_dir)
    scrubber = _Scrubber(model_dir, hub_id or LOCAL_MODEL)
    published_config = scrubber.value(dict(config)) if config is not None else None
    published_report = scrubber.value(dict(report))
    published_command = scrubber.command(command) if command else None
    local_files = merge_local_files(scrubber.files.values())
    if local_files:
        published_report["local_files"] = local_files
    data_dirs = [d for d in _find_key(config, "data_dir") if isinstance(d, (str, os.PathLike))]
    return Publication(
        report=published_report,
        config=published_config,
        command=published_command,
        base_model=hub_id,
        model_label=label,
        local_files=local_files,
        private={**private_paths(data_dirs), **scrubber.private},
    )


def publishable(value: Any) -> tuple[Any, list[dict[str, Any]]]:
    """``value`` (JSON-like) with local paths replaced by names, and ``{"name", "bytes", "sha256"}`` of each file it
    named: for results added to a saved checkpoint later (``hf-calibprune evaluate``)."""
    scrubber = _Scrubber(None, LOCAL_MODEL)
    return scrubber.value(value), list(scrubber.files.values())


def merge_local_files(*lists: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """One ``local_files`` list from several, without duplicates, sorted by name and hash."""
    merged = {(f["name"], f["sha256"]): dict(f) for files in lists for f in files or []}
    return [merged[key] for key in sorted(merged)]


def _find_key(value: Any, key: str) -> list[Any]:
    if isinstance(value, Mapping):
        found = [value[key]] if key in value else []
        return found + [item for v in value.values() for item in _find_key(v, key)]
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _find_key(v, key)]
    return []


def _published_bytes(path: Path) -> bytes:
    """What a reader of ``path`` sees as text: a safetensors file's JSON header, any other file whole."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return handle.read(min(size, 100 << 20))


def _is_private_location(text: str) -> bool:
    """An absolute or ``~`` path under the home directory, or into an existing directory of this machine at least
    two levels deep outside the system ones (``/tmp/alice/x``, ``/data/team/...``; not ``/usr/bin/env``)."""
    candidate = os.path.expanduser(text)
    if _components(candidate) < 2 or Path(candidate).parts[1] in _SYSTEM_ROOTS:
        return False
    home = _home()
    if home and candidate.startswith(home + os.sep):
        return True
    existing = Path(candidate)
    while not existing.exists():
        existing = existing.parent
    return _components(str(existing)) >= 2


def _unknown_private_path(text: str) -> str | None:
    """The first path in ``text`` into this machine's own directories (:func:`_is_private_location`)."""
    return next((m.group(0) for m in _PATH_IN_TEXT.finditer(text) if _is_private_location(m.group(0))), None)


def check_publishable(
    folder: str | os.PathLike,
    private: Mapping[str, str] | None = None,
    *,
    files: Iterable[Path] | None = None,
    replaced: Mapping[str, bytes] | None = None,
    shown_as: str | os.PathLike | None = None,
) -> None:
    """Refuse a checkpoint folder that would publish a private path.

    Every file is searched for the strings of ``private`` and of :func:`private_paths` (safetensors files: their
    JSON header); the files hf_calibprune writes (:data:`OWN_FILES`) also for any absolute path into an existing
    directory of this machine outside the system ones.

    Args:
        folder (`str` or `os.PathLike`): the checkpoint directory.
        private (`dict[str, str]`, *optional*): strings to refuse, with what they are (:attr:`Publication.private`).
        files (`Iterable[Path]`, *optional*): the files to search; defaults to every file under ``folder``.
        replaced (`dict[str, bytes]`, *optional*): content to search instead of a file's own, by relative path
            (a README merged with the one on the Hub).
        shown_as (`str` or `os.PathLike`, *optional*): the folder's name in the message (the target of a save that is
            still written in a temporary sibling).

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: naming the file, the offending string and what it is.
    """
    folder = Path(folder)
    forbidden = {**private_paths(), **(private or {})}
    paths = sorted(p for p in folder.rglob("*") if p.is_file()) if files is None else list(files)
    for path in paths:
        relative = path.relative_to(folder).as_posix()
        data = replaced[relative] if replaced and relative in replaced else _published_bytes(path)
        found = next(((s, what) for s, what in forbidden.items() if s.encode("utf-8") in data), None)
        if found is None and relative in OWN_FILES:
            unknown = _unknown_private_path(data.decode("utf-8", errors="replace"))
            found = (unknown, "a local path") if unknown else None
        if found is not None:
            string, what = found
            raise CheckpointError(
                f"Refusing to publish {Path(shown_as or folder) / relative}: it contains '{string}' ({what}). Published files name "
                f"local files by their file name only; remove that path from {relative} (a card edited by hand) "
                "or save the model again with save_sparse, which writes names, not paths."
            )
