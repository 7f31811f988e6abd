"""The study's grid: methods × calibration sources × formats, with the combinations that apply.

A format a source cannot take (``icl`` on ``c4``: pre-training text has no solved examples) falls back to
``plain``, and a run that becomes a duplicate that way is dropped; both are reported in
:attr:`StudyPlan.notes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CalibrationError, ConfigError

__all__ = ["StudySettings", "StudyRun", "StudyPlan", "plan_study"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudySettings:
    """Everything that decides a study's numbers; part of every cached run's key.

    Args:
        model (`str`): model directory or Hub id.
        methods (`tuple[str, ...]`): pruning methods (``"wanda"``, ``"sparsegpt"``, ...).
        sparsity (`float`): target sparsity.
        pattern (`str`): ``"unstructured"`` or ``"N:M"``.
        calibration (`tuple[str, ...]`): calibration source names.
        formats (`tuple[str, ...]`): calibration formats (``"plain"``, ``"icl"``, ``"cot"``, ...).
        eval (`tuple[str, ...]`): evaluation task names (see :mod:`hf_calibprune.evaluation.suite`).
        num_samples (`int`): calibration sequences per run.
        seq_len (`int`): calibration sequence length.
        eval_seq_len (`int`, *optional*): perplexity window (defaults to ``seq_len``).
        limit (`int`, *optional*): evaluation windows / examples per task.
        seed (`int`): calibration seed.
        data_dir (`str`, *optional*): local data mirror for calibration and evaluation.
        gguf_file (`str`, *optional*): GGUF file inside ``model``.
        batch_size (`int`): evaluation batch size.
    """

    model: str
    methods: tuple[str, ...] = ("wanda",)
    sparsity: float = 0.5
    pattern: str = "unstructured"
    calibration: tuple[str, ...] = ("c4",)
    formats: tuple[str, ...] = ("plain",)
    eval: tuple[str, ...] = ("wikitext2",)
    num_samples: int = 128
    seq_len: int = 2048
    eval_seq_len: int | None = None
    limit: int | None = None
    seed: int = 0
    data_dir: str | None = None
    gguf_file: str | None = None
    batch_size: int = 8

    def evaluation_key(self) -> dict[str, Any]:
        """The settings a dense baseline depends on."""
        return {
            "model": self.model,
            "gguf_file": self.gguf_file,
            "eval": list(self.eval),
            "eval_seq_len": self.eval_seq_len or self.seq_len,
            "limit": self.limit,
            "data_dir": self.data_dir,
        }


@dataclass(frozen=True)
class StudyRun:
    """One cell of the grid (or the dense baseline, ``method="dense"``).

    Args:
        method (`str`), calibration (`str`), format (`str`): what this run prunes with.
        requested_format (`str`): the format asked for (differs from ``format`` after a fallback).
        key (`dict`): every setting the run's numbers depend on; its hash names the cache file.
    """

    method: str
    calibration: str
    format: str
    requested_format: str
    key: dict[str, Any] = field(compare=False, hash=False)

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:10]
        if self.is_dense:
            return f"dense-{digest}"
        label = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{self.method}-{self.calibration}-{self.format}").strip("-")
        return f"{label}-{digest}"


@dataclass
class StudyPlan:
    """The runs to do, in order (dense first), and notes on combinations skipped or changed."""

    runs: list[StudyRun]
    notes: list[str]


def _supported_format(source: str, fmt: str, data_dir: str | None) -> tuple[str | None, str | None]:
    """Return ``(format to use, note)``; format `None` means the source cannot be used at all."""
    from ..calibration import CalibrationConfig

    try:
        CalibrationConfig(sources=source, format=fmt, data_dir=data_dir)
        return fmt, None
    except (CalibrationError, ConfigError) as error:
        if fmt == "plain":
            raise
        reason = str(error).split(". ")[0]
    try:
        CalibrationConfig(sources=source, format="plain", data_dir=data_dir)
    except (CalibrationError, ConfigError):
        return None, f"{source}: format '{fmt}' does not apply ({reason}); skipped."
    return "plain", f"{source}: format '{fmt}' does not apply ({reason}); using 'plain'."


def plan_study(settings: StudySettings) -> StudyPlan:
    """Expand the grid, checking methods, sources and formats before anything is loaded or pruned."""
    from ..config import PruningConfig

    for method in settings.methods:  # an unknown method or a bad sparsity/pattern fails here, with its hint
        PruningConfig(
            method=method,
            sparsity=settings.sparsity,
            pattern=settings.pattern,
            num_samples=settings.num_samples,
            seq_len=settings.seq_len,
            seed=settings.seed,
        )
    notes: list[str] = []
    runs: list[StudyRun] = [
        StudyRun("dense", "-", "-", "-", key={"kind": "dense", **settings.evaluation_key()})
    ]
    seen: set[tuple[str, str, str]] = set()
    for method in settings.methods:
        for source in settings.calibration:
            for fmt in settings.formats:
                effective, note = _supported_format(source, fmt, settings.data_dir)
                if note and note not in notes:
                    notes.append(note)
                if effective is None:
                    continue
                cell = (method, source, effective)
                if cell in seen:
                    continue
                seen.add(cell)
                key = {
                    "kind": "pruned",
                    "method": method,
                    "sparsity": settings.sparsity,
                    "pattern": settings.pattern,
                    "calibration": source,
                    "format": effective,
                    "num_samples": settings.num_samples,
                    "seq_len": settings.seq_len,
                    "seed": settings.seed,
                    **settings.evaluation_key(),
                }
                runs.append(StudyRun(method, source, effective, fmt, key=key))
    for note in notes:
        logger.info(note)
    return StudyPlan(runs=runs, notes=notes)


def settings_to_dict(settings: StudySettings) -> dict[str, Any]:
    """JSON-able form of the settings."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(settings).items()}
