"""Base classes of calibration sources: where the rows come from, and how a row becomes text.

A source is one small class: its Hub location (:class:`HubSpec`), where its files sit in a local mirror
(``<data_dir>/<local dir>/<pattern>``), how a raw row of either schema is normalized, and the study's
templates. Sources never tokenize; :mod:`hf_calibprune.calibration.build` does.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...errors import CalibrationError
from ..io import (
    HubSpec,
    expand_paths,
    find_local_files,
    load_hub_records,
    read_records,
    render_template,
    resolve_data_dir,
    texts_from_field,
)

__all__ = [
    "CalibrationSource",
    "DocumentSource",
    "TaskSource",
    "SyntheticSource",
    "CustomSource",
    "TextPool",
    "LoadRequest",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadRequest:
    """What the caller asked for one source: local overrides and text options.

    Args:
        data_files (`list[str]`, *optional*): local files in the source's raw schema.
        data_dir (`str`, *optional*): local mirror ``<data_dir>/<source>/<files>``.
        revision (`str`, *optional*): Hub revision override.
        text_field (`str`, *optional*): column with the text (custom and pre-training sources).
        template (`str`, *optional*): ``str.format`` template over a row's raw columns.
    """

    data_files: list[str] | None = None
    data_dir: str | None = None
    revision: str | None = None
    text_field: str | None = None
    template: str | None = None


@dataclass
class TextPool:
    """Texts ready to tokenize, and how to cut samples from them.

    Args:
        texts (`list[str]`): documents or rendered examples.
        mode (`str`): ``"stream"`` (one long text, random windows), ``"documents"`` (Wanda's random long
            document, else concatenation) or ``"examples"`` (each tokenized with its BOS, concatenated or
            ``shots`` per sample).
        origin (`dict`): fingerprint facts (files or Hub id, revision, rows).
    """

    texts: list[str]
    mode: str
    origin: dict[str, Any] = field(default_factory=dict)


class CalibrationSource:
    """A named calibration source. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str] = ""
    #: ``"pretraining"``, ``"task"``, ``"synthetic"``, ``"model"`` or ``"custom"``.
    kind: ClassVar[str] = "task"
    description: ClassVar[str] = ""
    hub: ClassVar[HubSpec | None] = None
    #: Folder names under a local mirror, in preference order (defaults to ``(name,)``).
    local_dirs: ClassVar[tuple[str, ...]] = ()
    #: Glob patterns inside the folder, in preference order; the first that matches is read.
    local_patterns: ClassVar[tuple[str, ...]] = ("train*.jsonl", "*.jsonl")
    #: Glob patterns of a separate evaluation split beside the calibration files (``test.jsonl``); the
    #: source's held-apart domain text (:mod:`hf_calibprune.evaluation.domains`). Empty: none exists.
    eval_patterns: ClassVar[tuple[str, ...]] = ()
    #: Where the study's code defines this source (for docs and ``calibration list``).
    reference: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ("plain",)

    # -- class-level facts -----------------------------------------------------------------------------
    @classmethod
    def supported_formats(cls, template: bool = False) -> tuple[str, ...]:
        if template and cls.kind in ("task", "pretraining", "custom"):
            return ("plain", "single", "icl")
        return cls.formats

    @classmethod
    def has_rationales(cls) -> bool:
        return "cot" in cls.formats

    @classmethod
    def dirs(cls) -> tuple[str, ...]:
        return cls.local_dirs or (cls.name,)

    @classmethod
    def rationale_note(cls) -> str:
        return ""

    # -- loading ---------------------------------------------------------------------------------------
    def patterns(self, fmt: str) -> tuple[str, ...]:
        return self.local_patterns

    def load_records(self, request: LoadRequest, fmt: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Raw rows from ``data_files``, else the local mirror, else the Hub; and their origin."""
        patterns = self.patterns(fmt)
        if request.data_files:
            paths = expand_paths(request.data_files)
            return self.read_local(paths, fmt), {"origin": "local", "files": [str(p.resolve()) for p in paths]}
        root = resolve_data_dir(request.data_dir)
        found = find_local_files(root, self.dirs(), patterns)
        if found:
            if any("test" in p.name.lower() for p in found):
                logger.warning(
                    "Calibrating '%s' on %s, a test split (the only local copy); do not evaluate on the same rows.",
                    self.name,
                    ", ".join(p.name for p in found),
                )
            return self.read_local(found, fmt), {"origin": "local", "files": [str(p.resolve()) for p in found]}
        if self.hub is None:
            where = f"{root}/{self.dirs()[0]}/" if root is not None else "a local mirror"
            raise CalibrationError(
                f"Calibration source '{self.name}' has no Hub copy and no files in {where} "
                f"({' or '.join(patterns)}). Pass data_files=PATH (--data-files) or data_dir=DIR (--data-dir)."
            )
        return self.load_hub(request, fmt)

    def read_local(self, paths: list[Path], fmt: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for path in paths:
            rows.extend(read_records(path))
        return rows

    def load_hub(self, request: LoadRequest, fmt: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert self.hub is not None
        return load_hub_records(
            self.hub,
            source=self.name,
            revision=request.revision,
            local_dirs=self.dirs(),
            patterns=self.patterns(fmt),
        )

    def pool(self, request: LoadRequest, fmt: str) -> TextPool:
        """Texts for ``fmt`` (already checked to be supported)."""
        rows, origin = self.load_records(request, fmt)
        where = _where(origin, self.name)
        if not rows:
            raise CalibrationError(f"{where} has no rows.")
        if request.template is not None:
            texts = render_template(request.template, rows, where=where)
            return TextPool(_non_empty(texts, where, "the template"), "documents" if fmt == "plain" else "examples", origin)
        return self.pool_from_rows(rows, fmt, request, origin)

    def pool_from_rows(
        self, rows: list[dict[str, Any]], fmt: str, request: LoadRequest, origin: dict[str, Any]
    ) -> TextPool:
        raise NotImplementedError

    def render(self, request: LoadRequest, fmt: str) -> list[str]:
        """The texts of ``fmt`` as the model would see them (one unit each), before tokenization."""
        return self.pool(request, fmt).texts


def _where(origin: dict[str, Any], name: str) -> str:
    if origin.get("origin") == "local":
        files = origin.get("files") or []
        shown = ", ".join(files[:2]) + (" ..." if len(files) > 2 else "")
        return f"'{name}' ({shown})"
    if origin.get("origin") == "hub":
        return f"'{name}' (Hub {origin.get('hub_id')})"
    return f"'{name}'"


def _non_empty(texts: list[str], where: str, what: str) -> list[str]:
    kept = [text for text in texts if text and text.strip()]
    if not kept:
        raise CalibrationError(f"Every row of {where} rendered to empty text with {what}; nothing to calibrate on.")
    return kept


class DocumentSource(CalibrationSource):
    """Pre-training text: documents from a text column (``join`` makes one long stream, as WikiText-2)."""

    kind: ClassVar[str] = "pretraining"
    text_field: ClassVar[str] = "text"
    #: If set, documents are joined with it into one stream cut at random windows (Wanda's WikiText-2).
    join: ClassVar[str | None] = None
    local_patterns: ClassVar[tuple[str, ...]] = ("*.jsonl", "*.json", "*.jsonl.gz", "*.json.gz", "*.txt")

    def pool_from_rows(self, rows, fmt, request, origin) -> TextPool:
        where = _where(origin, self.name)
        texts = texts_from_field(rows, request.text_field or self.text_field, where=where)
        if self.join is not None:
            return TextPool([self.join.join(texts)], "stream", origin)
        return TextPool(_non_empty(texts, where, "its text field"), "documents", origin)


class TaskSource(CalibrationSource):
    """A labelled task rendered with the study's templates.

    Subclasses implement :meth:`normalize` (raw row of the Hub or local schema → template fields, `None` to
    skip) and set ``prompt_template`` (``zero``), ``answer_template`` (``single``/``icl``) and, when
    rationales exist, ``cot_template`` whose row field ``rationale`` must be non-empty.
    """

    kind: ClassVar[str] = "task"
    formats: ClassVar[tuple[str, ...]] = ("plain", "zero", "single", "icl")
    prompt_template: ClassVar[str] = ""
    answer_template: ClassVar[str] = ""
    cot_template: ClassVar[str | None] = None
    #: Required normalized fields, for error messages.
    fields: ClassVar[tuple[str, ...]] = ()

    def normalize(self, row: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def template_for(self, fmt: str) -> str:
        if fmt == "zero":
            return self.prompt_template
        if fmt == "cot":
            assert self.cot_template is not None
            return self.cot_template
        return self.answer_template

    def pool_from_rows(self, rows, fmt, request, origin) -> TextPool:
        where = _where(origin, self.name)
        normalized = []
        for row in rows:
            try:
                item = self.normalize(row)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                item = None
            if item is not None:
                normalized.append(item)
        if not normalized:
            columns = sorted({key for row in rows[:100] for key in row})
            raise CalibrationError(
                f"No usable row in {where}: expected the fields of the '{self.name}' schema "
                f"({', '.join(self.fields) or 'see docs/calibration.md'}), found columns {', '.join(columns)}."
            )
        if fmt == "cot":
            normalized = [item for item in normalized if str(item.get("rationale") or "").strip()]
            if not normalized:
                raise CalibrationError(
                    f"{where} has no rationales, which format 'cot' needs. {self.rationale_note()}".strip()
                )
        template = self.template_for(fmt)
        texts = [template.format_map(item) for item in normalized]
        return TextPool(_non_empty(texts, where, f"format '{fmt}'"), "examples", origin)


class SyntheticSource(CalibrationSource):
    """Text made up from nothing (the study's random and ellipses baselines): token ids built directly."""

    kind: ClassVar[str] = "synthetic"

    def texts(self, count: int, rng) -> list[str]:
        raise NotImplementedError

    def build_ids(self, tokenizer: Any, num_samples: int, seq_len: int, rng) -> list[list[int]]:
        """Each sample: texts tokenized (with special tokens) and concatenated past ``seq_len``, first ``seq_len``."""
        samples = []
        for _ in range(num_samples):
            ids: list[int] = []
            while len(ids) <= seq_len:
                chunk = tokenizer(self.texts(1, rng)[0], add_special_tokens=True, verbose=False)["input_ids"]
                if not chunk:
                    raise CalibrationError(f"The tokenizer turned '{self.name}' text into no tokens.")
                ids.extend(chunk)
            samples.append(ids[:seq_len])
        return samples

    def render(self, request: LoadRequest, fmt: str, count: int = 1, rng=None) -> list[str]:
        import random

        return self.texts(count, rng or random.Random(0))


class CustomSource(CalibrationSource):
    """A user's local file/directory, Hub dataset id, ``datasets.Dataset`` or list of strings.

    Args:
        name (`str`): the path or Hub id (or ``"<texts>"``/``"<dataset>"``).
        rows (`list[dict]`, *optional*): rows already in memory.
        origin (`dict`, *optional*): fingerprint facts for in-memory rows.
        hub_id (`str`, *optional*): a Hub dataset id to load (split ``train``, streamed, first 20,000 rows).
    """

    kind: ClassVar[str] = "custom"
    formats: ClassVar[tuple[str, ...]] = ("plain", "single", "icl")
    hub_max_rows: ClassVar[int] = 20000

    def __init__(
        self,
        name: str,
        *,
        rows: list[dict[str, Any]] | None = None,
        origin: dict[str, Any] | None = None,
        hub_id: str | None = None,
    ) -> None:
        self.display_name = name
        self._rows = rows
        self._origin = origin or {}
        self._hub_id = hub_id

    def load_records(self, request: LoadRequest, fmt: str):
        if self._rows is not None:
            return self._rows, self._origin
        if request.data_files:
            paths = expand_paths(request.data_files)
        elif self._hub_id is None:
            paths = expand_paths([self.display_name]) if not _is_saved_dataset(self.display_name) else None
            if paths is None:
                return _load_saved_dataset(self.display_name)
        else:
            paths = None
        if paths is not None:
            rows: list[dict[str, Any]] = []
            for path in paths:
                rows.extend(read_records(path))
            return rows, {"origin": "local", "files": [str(p.resolve()) for p in paths]}
        spec = HubSpec(self._hub_id, split="train", streaming=True, max_rows=self.hub_max_rows)
        hint = (
            "Pass a local copy instead: the path of a .jsonl/.json/.txt/.tsv/.csv/.parquet file or of a "
            "dataset saved with save_to_disk, or a datasets.Dataset / list of strings."
        )
        return load_hub_records(spec, source=self._hub_id, revision=request.revision, hint=hint)

    def pool_from_rows(self, rows, fmt, request, origin) -> TextPool:
        where = _where(origin, self.display_name)
        texts = texts_from_field(rows, request.text_field or "text", where=where)
        return TextPool(_non_empty(texts, where, "its text field"), "documents" if fmt == "plain" else "examples", origin)

    def pool(self, request: LoadRequest, fmt: str) -> TextPool:
        rows, origin = self.load_records(request, fmt)
        where = _where(origin, self.display_name)
        if not rows:
            raise CalibrationError(f"{where} has no rows.")
        if request.template is not None:
            texts = render_template(request.template, rows, where=where)
            return TextPool(_non_empty(texts, where, "the template"), "documents" if fmt == "plain" else "examples", origin)
        return self.pool_from_rows(rows, fmt, request, origin)


def _is_saved_dataset(path: str) -> bool:
    folder = Path(path).expanduser()
    return folder.is_dir() and ((folder / "dataset_info.json").is_file() or (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def _load_saved_dataset(path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(os.fspath(Path(path).expanduser()))
    except Exception as error:  # noqa: BLE001
        raise CalibrationError(f"Could not load the saved dataset at '{path}': {error}") from error
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    rows = [dict(row) for row in loaded]
    return rows, {"origin": "local", "files": [str(Path(path).resolve())], "fingerprint": getattr(loaded, "_fingerprint", None)}


_NUMBER = re.compile(r"(\d+)")


def numeric_sort_key(path: Path) -> list[Any]:
    """Sort ``train_CoT_10.json`` after ``train_CoT_9.json``."""
    return [int(part) if part.isdigit() else part for part in _NUMBER.split(path.name)]


def is_rationale_file(path: Path) -> bool:
    """Whether ``path`` is one of distilling-step-by-step's LLM CoT output files (``llm_cot/train_CoT_0.json``)."""
    return path.parent.name in ("llm", "llm_cot") or "_CoT_" in path.name


def read_with_llm_rationales(
    paths: list[Path], *, source: str, pattern: str, parse: Any
) -> list[dict[str, Any]]:
    """Rows of the data files in ``paths`` with ``llm_rationale`` from the aligned CoT files.

    The CoT files are those in ``paths`` (see :func:`is_rationale_file`) or, when none is given, the files
    matching ``pattern`` next to the first data file. Entry *i* of the concatenated files (sorted by their
    number) belongs to row *i*. ``parse`` turns one LLM output into a rationale (or `None`).
    """
    rationale_paths = [p for p in paths if is_rationale_file(p)]
    data_paths = [p for p in paths if not is_rationale_file(p)]
    if not data_paths:
        raise CalibrationError(f"'{source}' cot needs its data file next to the rationale files; got only {paths}.")
    if not rationale_paths:
        rationale_paths = sorted(data_paths[0].parent.glob(pattern))
    rationale_paths = sorted(rationale_paths, key=numeric_sort_key)
    if not rationale_paths:
        raise CalibrationError(
            f"Format 'cot' of '{source}' reads the LLM rationales of distilling step-by-step from "
            f"{data_paths[0].parent / pattern}, and there are none. Pass them with the data file "
            "(data_files=[DATA, 'llm_cot/train_CoT_0.json', ...]) or use a data_dir laid out like ../shared/data."
        )
    rows: list[dict[str, Any]] = []
    for path in data_paths:
        rows.extend(read_records(path))
    outputs: list[str] = []
    for path in rationale_paths:
        outputs.extend(str(item.get("text", "")) for item in read_records(path))
    if len(outputs) != len(rows):
        raise CalibrationError(
            f"'{source}' has {len(rows)} rows in {', '.join(p.name for p in data_paths)} but {len(outputs)} "
            f"rationales in {', '.join(p.name for p in rationale_paths)}; they must align one to one."
        )
    return [dict(row, llm_rationale=parse(output)) for row, output in zip(rows, outputs)]
