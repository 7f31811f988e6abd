"""Held-apart text of a calibration source's own domain, for perplexity: ``ppl:gsm8k``, ``ppl:race``, ``ppl:ud@de``.

For a task source the evaluation rows are its separate test or validation split when the local mirror has
one (the source's ``eval_patterns``: GSM8K ``test*.jsonl``, RTE ``val.jsonl``, ...), rendered with the same
template the ``icl`` calibration format uses. Where calibration and evaluation would read the same file
(RACE, BoolQ, WinoGrande, SVAMP), a quarter of its rows is held apart: those whose
``int(sha256(text)[:8], 16) % 4 == 0``, the rule the data mirror uses for its own GSM8K hold-out. For
pre-training text (C4) the held-apart rows are the last quarter of the documents (C4 documents 600-799
of the mirror's 800, the text ``c4`` perplexity reads), and for ``ud@<lang>`` they are the PUD sentences.

Calibration must then not read the held-apart rows: :attr:`DomainSplit.calibration_rows` are the rows it
may read instead (`None` when its own files are already apart). Every evaluation row whose rendered text
hashes the same as a calibration row is dropped, so the two never share a row (checked by sha256).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from ..calibration.io import find_local_files, read_records, resolve_data_dir, texts_from_field
from ..calibration.sources import SOURCES, make_source
from ..calibration.sources._language import split_language
from ..calibration.sources.base import DocumentSource, LoadRequest, TaskSource
from ..errors import CalibrationError
from ..registry import suggest
from .data import EvaluationError

__all__ = ["DomainSplit", "domain_split", "is_domain", "text_sha256", "HELD_APART_MODULUS"]

logger = logging.getLogger(__name__)

#: One row in this many is held apart when calibration and evaluation share a file.
HELD_APART_MODULUS = 4


def text_sha256(text: str) -> str:
    """The hash rows are compared by: sha256 of the text with whitespace runs collapsed."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def _held_apart(text: str) -> bool:
    return int(text_sha256(text)[:8], 16) % HELD_APART_MODULUS == 0


@dataclass(frozen=True)
class DomainSplit:
    """A source's evaluation rows and the rows calibration may use.

    Args:
        source (`str`): the calibration source (``"race"``, ``"ud@de"``).
        texts (`list[str]`): evaluation rows as the model sees them (joined with blank lines for perplexity).
        calibration_rows (`list[dict]`, *optional*): raw rows calibration must read instead of the source's
            files (the held-apart rows removed); `None` when the evaluation split is a separate file.
        calibration_hashes (`frozenset[str]`): :func:`text_sha256` of every row calibration may read.
        description (`str`): where the evaluation rows come from.
    """

    source: str
    texts: list[str]
    calibration_rows: list[dict[str, Any]] | None
    calibration_hashes: frozenset[str]
    description: str

    @property
    def hashes(self) -> frozenset[str]:
        return frozenset(text_sha256(text) for text in self.texts)


def is_domain(name: str) -> bool:
    """Whether ``name`` (after ``ppl:``) names a registered calibration source with a domain."""
    base, _ = split_language(name)
    return base in SOURCES and SOURCES.get(base).kind in ("task", "pretraining")


def _unit_texts(source: Any, rows: list[dict[str, Any]], origin: dict[str, Any]) -> list[str]:
    """One text per usable row: the ``icl`` rendering of a task row, the text field of a document."""
    if isinstance(source, TaskSource):
        return source.pool_from_rows(rows, "icl", LoadRequest(), origin).texts
    assert isinstance(source, DocumentSource)
    texts = texts_from_field(rows, source.text_field, where=f"'{source.name}'")
    return [text for text in texts if text.strip()]


def _rendered_pairs(source: Any, rows: list[dict[str, Any]], origin: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """``(raw row, text)`` for each row that renders (rows that do not are skipped, as calibration skips them)."""
    pairs = []
    for row in rows:
        try:
            texts = _unit_texts(source, [row], origin)
        except CalibrationError:
            continue
        if texts:
            pairs.append((row, texts[0]))
    return pairs


def domain_split(name: str, data_dir: str | os.PathLike | None = None) -> DomainSplit:
    """The held-apart evaluation text of calibration source ``name`` and the rows calibration may use.

    Args:
        name (`str`): a registered task or pre-training source (``"gsm8k"``, ``"c4"``, ``"ud@de"``).
        data_dir (`str`, *optional*): the local data mirror.

    Raises:
        `EvaluationError`: the source has no domain text (synthetic, model-generated), or no row is left.
    """
    base, _ = split_language(name)
    if base not in SOURCES:
        raise EvaluationError(f"Unknown domain '{name}'.{suggest(base, SOURCES.names())} Domains are calibration sources.")
    if not is_domain(name):
        raise EvaluationError(
            f"Calibration source '{name}' ({SOURCES.get(base).kind}) has no text of its own to hold apart; "
            "domains are task and pre-training sources."
        )
    source = make_source(name)
    fmt = "icl" if isinstance(source, TaskSource) else "plain"
    request = LoadRequest(data_dir=None if data_dir is None else os.fspath(data_dir))
    try:
        rows, origin = source.load_records(request, fmt)
    except CalibrationError as error:
        raise EvaluationError(f"Domain '{name}' needs its calibration rows to hold text apart: {error}") from error
    calibration_files = set(origin.get("files") or [])
    separate = find_local_files(resolve_data_dir(request.data_dir), source.dirs(), source.eval_patterns) if source.eval_patterns else None
    separate = [path for path in separate or [] if str(path.resolve()) not in calibration_files]
    pairs = _rendered_pairs(source, rows, origin)
    if separate:
        eval_rows = [row for path in separate for row in read_records(path)]
        eval_texts = [text for _, text in _rendered_pairs(source, eval_rows, {"origin": "local", "files": [str(p) for p in separate]})]
        calibration_rows = None
        calibration_texts = [text for _, text in pairs]
        description = f"{', '.join(p.name for p in separate)} (a separate split)"
    else:
        if isinstance(source, TaskSource):
            apart = [_held_apart(text) for _, text in pairs]
            rule = f"rows with sha256 % {HELD_APART_MODULUS} == 0"
        else:
            start = len(pairs) - len(pairs) // HELD_APART_MODULUS
            apart = [index >= start for index in range(len(pairs))]
            rule = f"the last {len(pairs) - start} of {len(pairs)} documents"
        eval_texts = [text for (_, text), out in zip(pairs, apart) if out]
        calibration_rows = [row for (row, _), out in zip(pairs, apart) if not out]
        calibration_texts = [text for (_, text), out in zip(pairs, apart) if not out]
        files = ", ".join(sorted(os.path.basename(f) for f in calibration_files)) or origin.get("hub_id", name)
        description = f"{files}: {rule}, held apart from calibration"
    calibration_hashes = frozenset(text_sha256(text) for text in calibration_texts)
    kept = [text for text in eval_texts if text_sha256(text) not in calibration_hashes]
    if len(kept) < len(eval_texts):
        logger.warning(
            "Domain '%s': %d of %d evaluation rows also occur in the calibration rows and were dropped.",
            name,
            len(eval_texts) - len(kept),
            len(eval_texts),
        )
        description += f"; {len(eval_texts) - len(kept)} rows shared with calibration dropped"
    if not kept:
        raise EvaluationError(f"Domain '{name}' has no evaluation row left apart from calibration ({description}).")
    return DomainSplit(name, kept, calibration_rows, calibration_hashes, f"{name} held-apart text: {len(kept)} rows of {description}")
