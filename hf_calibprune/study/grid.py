"""The study's grid: methods × calibration sources × formats × seeds, and methods × languages × seeds.

A format a source cannot take is skipped when another asked format applies (``cot`` on a source without
rationales), and a source that takes none of them runs once in ``plain`` (``icl`` on ``c4``: pre-training
text has no solved examples); both are reported in :attr:`StudyPlan.notes`. Every cell is repeated once
per calibration seed; the seed changes which calibration samples are drawn and nothing else.
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
        pattern (`str`): ``"unstructured"``, ``"N:M"``, or a structured pattern (``"channels"``, ``"blocks"``,
            ``"experts"``).
        calibration (`tuple[str, ...]`): calibration source names (may be empty when ``languages`` is not).
        formats (`tuple[str, ...]`): calibration formats (``"plain"``, ``"icl"``, ``"cot"``, ...).
        eval (`tuple[str, ...]`): evaluation task names (see :mod:`hf_calibprune.evaluation.suite`);
            ``ppl:SOURCE`` is perplexity on a calibration source's held-apart text (the source × domain matrix).
        num_samples (`int`): calibration sequences per run.
        seq_len (`int`): calibration sequence length.
        eval_seq_len (`int`, *optional*): perplexity window (defaults to ``seq_len``).
        limit (`int`, *optional*): evaluation windows / examples per task.
        seeds (`tuple[int, ...]`): calibration seeds; every cell runs once per seed.
        baseline (`str`, *optional*): the calibration source every other cell is compared with (defaults
            to the first of ``calibration``).
        languages (`tuple[str, ...]`): calibration languages; each is a cell calibrated on
            ``language_source@<lang>`` and scored on the PUD text (``ppl:ud@<lang>``) of every language.
        language_source (`str`): the multilingual source of the language cells (``"ud"``: the local UD text;
            ``"c4"``, ``"oscar"``, ``"wikipedia"`` read the Hub).
        device (`str`, *optional*): device the model is moved to before pruning and evaluation (``"cuda"``).
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
    seeds: tuple[int, ...] = (0,)
    baseline: str | None = None
    languages: tuple[str, ...] = ()
    language_source: str = "ud"
    data_dir: str | None = None
    gguf_file: str | None = None
    batch_size: int = 8
    device: str | None = None

    @property
    def baseline_source(self) -> str | None:
        return self.baseline or (self.calibration[0] if self.calibration else None)

    def language_eval(self) -> tuple[str, ...]:
        """The PUD perplexity tasks of the language matrix (parallel text, one per language)."""
        return tuple(f"ppl:ud@{language}" for language in self.languages)

    def evaluation_key(self) -> dict[str, Any]:
        """The settings a dense baseline depends on."""
        key = {
            "model": self.model,
            "gguf_file": self.gguf_file,
            "eval": list(self.eval),
            "eval_seq_len": self.eval_seq_len or self.seq_len,
            "limit": self.limit,
            "data_dir": self.data_dir,
        }
        if self.device is not None:
            key["device"] = self.device
        return key


@dataclass(frozen=True)
class StudyRun:
    """One run: a cell of the grid at one seed, a language cell at one seed, or the dense baseline.

    Args:
        method (`str`), calibration (`str`), format (`str`): what this run prunes with.
        requested_format (`str`): the format asked for (differs from ``format`` after a fallback).
        key (`dict`): every setting the run's numbers depend on; its hash names the cache file.
        seed (`int`, *optional*): calibration seed (`None` for the dense baseline).
        kind (`str`): ``"dense"``, ``"pruned"`` (source × format grid) or ``"language"``.
        eval (`tuple[str, ...]`): the evaluation tasks of this run.
    """

    method: str
    calibration: str
    format: str
    requested_format: str
    key: dict[str, Any] = field(compare=False, hash=False)
    seed: int | None = None
    kind: str = "pruned"
    eval: tuple[str, ...] = ()

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:10]
        if self.is_dense:
            return f"dense-{digest}"
        label = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{self.method}-{self.calibration}-{self.format}-s{self.seed}").strip("-")
        return f"{label}-{digest}"


@dataclass
class StudyPlan:
    """The runs to do, in order (dense first), and notes on combinations skipped or changed."""

    runs: list[StudyRun]
    notes: list[str]


def _format_refusal(source: str, fmt: str, data_dir: str | None) -> str | None:
    """Why ``source`` cannot take ``fmt`` (the error's first sentence), or `None` when it can."""
    from ..calibration import CalibrationConfig

    try:
        CalibrationConfig(sources=source, format=fmt, data_dir=data_dir)
    except (CalibrationError, ConfigError) as error:
        return str(error).split(". ")[0]
    return None


def _source_formats(source: str, formats: tuple[str, ...], data_dir: str | None, notes: list[str]) -> list[tuple[str, str]]:
    """``(format used, format asked)`` pairs of one source: the asked formats it takes, else ``plain`` once.

    A format the source cannot take is skipped when another asked one applies (``cot`` on a source without
    rationales, next to ``icl``); when none applies the source runs once in ``plain`` (``icl`` on ``c4``).
    Each change is added to ``notes``.
    """
    from ..calibration import CalibrationConfig

    if "plain" in formats:  # a source that cannot take plain text is a mistake, reported with its full hint
        CalibrationConfig(sources=source, format="plain", data_dir=data_dir)
    refusals = {fmt: _format_refusal(source, fmt, data_dir) for fmt in formats}
    taken = [(fmt, fmt) for fmt in formats if refusals[fmt] is None]
    fallback = not taken and _format_refusal(source, "plain", data_dir) is None
    refused = [(fmt, reason) for fmt, reason in refusals.items() if reason is not None]
    if fallback:
        names = ", ".join(f"'{fmt}'" for fmt, _ in refused)
        verb = "format {} does" if len(refused) == 1 else "formats {} do"
        notes.append(f"{source}: {verb.format(names)} not apply ({refused[0][1]}); using 'plain'.")
        return [("plain", formats[0])]
    notes.extend(f"{source}: format '{fmt}' does not apply ({reason}); skipped." for fmt, reason in refused)
    return taken


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
            seed=settings.seeds[0] if settings.seeds else 0,
        )
    _check_settings(settings)
    notes: list[str] = []
    dense_eval = tuple(settings.eval) + settings.language_eval()
    dense_key = {"kind": "dense", **settings.evaluation_key()}
    if settings.languages:
        dense_key["eval"] = list(dense_eval)
    runs: list[StudyRun] = [StudyRun("dense", "-", "-", "-", key=dense_key, seed=None, kind="dense", eval=dense_eval)]
    formats = {source: _source_formats(source, settings.formats, settings.data_dir, notes)
               for source in settings.calibration}
    cells = [
        (method, source, effective, fmt)
        for method in settings.methods
        for source, taken in formats.items()
        for effective, fmt in taken
    ]
    language_eval = settings.language_eval()
    # Seed-major order: every cell at the first seed comes before any cell's second seed, so a study cut
    # short (an interrupted run, or a time budget) has covered the whole grid once before repeating it.
    for seed in settings.seeds:
        for method, source, effective, fmt in cells:
            key = {**_pruned_key(settings, method, source, effective, seed), **settings.evaluation_key()}
            runs.append(StudyRun(method, source, effective, fmt, key=key, seed=seed, eval=tuple(settings.eval)))
    for seed in settings.seeds:
        for method in settings.methods:
            for language in settings.languages:
                source = f"{settings.language_source}@{language}"
                key = {
                    **_pruned_key(settings, method, source, "plain", seed),
                    **settings.evaluation_key(),
                    "kind": "language",
                    "eval": list(language_eval),
                }
                runs.append(StudyRun(method, source, "plain", "plain", key=key, seed=seed, kind="language", eval=language_eval))
    for note in notes:
        logger.info(note)
    return StudyPlan(runs=runs, notes=notes)


def _pruned_key(settings: StudySettings, method: str, source: str, fmt: str, seed: int) -> dict[str, Any]:
    return {
        "kind": "pruned",
        "method": method,
        "sparsity": settings.sparsity,
        "pattern": settings.pattern,
        "calibration": source,
        "format": fmt,
        "num_samples": settings.num_samples,
        "seq_len": settings.seq_len,
        "seed": seed,
    }


def _check_settings(settings: StudySettings) -> None:
    if not settings.calibration and not settings.languages:
        raise ConfigError("Nothing to run: name calibration sources (--calibration c4,gsm8k) or --languages en,de.")
    if not settings.eval and not settings.languages:
        raise ConfigError("No evaluation task: pass --eval (e.g. wikitext2,ppl:gsm8k).")
    if not settings.seeds:
        raise ConfigError("`seeds` is empty; pass at least one calibration seed, e.g. --seeds 0,1,2.")
    if len(set(settings.seeds)) != len(settings.seeds):
        raise ConfigError(f"`seeds` lists a seed twice: {list(settings.seeds)}.")
    if settings.baseline is not None and settings.baseline not in settings.calibration:
        raise ConfigError(
            f"--baseline {settings.baseline} is not one of the calibration sources ({', '.join(settings.calibration)}); "
            "the baseline must be a cell of the grid."
        )
    if len(set(settings.languages)) != len(settings.languages):
        raise ConfigError(f"`languages` lists a language twice: {list(settings.languages)}.")
    if settings.languages:
        from ..calibration import CalibrationConfig

        for language in settings.languages:  # an unknown language source or code fails here
            CalibrationConfig(sources=f"{settings.language_source}@{language}", data_dir=settings.data_dir)
            CalibrationConfig(sources=f"ud@{language}", data_dir=settings.data_dir)


def settings_to_dict(settings: StudySettings) -> dict[str, Any]:
    """JSON-able form of the settings."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(settings).items()}
