"""Run a calibration study: prune a fresh model per grid cell and seed, evaluate it, cache the result, resume.

Each finished run is written to ``OUT/runs/<run id>.json`` (temporary sibling, then rename) before the
next starts; the run id hashes every setting the numbers depend on, so a rerun with the same settings
skips what is done and a changed setting runs again. Failed runs are not cached.

A source evaluated on its own domain (``ppl:race`` with ``race`` in the grid) calibrates on the rows its
domain text was not taken from: they are written once to ``OUT/held_apart/<source>.jsonl`` and passed as
the source's ``data_files``, and the study checks by sha256 that no evaluation row is among them.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from .._io import read_json, write_json_atomic
from ..errors import CalibPruneError, CheckpointError
from .grid import StudyPlan, StudyRun, StudySettings, plan_study, settings_to_dict
from .outputs import write_outputs

__all__ = ["StudyResult", "run_study"]

logger = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What :func:`run_study` did.

    Args:
        records (`list[dict]`): one record per run (dense first), as cached in ``OUT/runs``.
        plan (`StudyPlan`): the grid and its notes.
        pruned (`int`): runs pruned and evaluated in this call.
        reused (`int`): runs read back from the cache.
        failed (`int`): runs that raised an error (not cached).
        files (`dict[str, Path]`): the tables, plots and summary written.
        skipped (`int`): runs not started because the ``deadline`` would have passed.
    """

    records: list[dict[str, Any]]
    plan: StudyPlan
    pruned: int
    reused: int
    failed: int
    files: dict[str, Path]
    skipped: int = 0


class _ModelSource:
    """Hands out a fresh model per run: reloaded from a directory, or copied from one dequantized GGUF load."""

    def __init__(self, settings: StudySettings, loader: Callable[..., tuple[torch.nn.Module, Any]]) -> None:
        self.settings = settings
        self.loader = loader
        self._pristine: torch.nn.Module | None = None
        self.tokenizer: Any = None

    def fresh(self) -> torch.nn.Module:
        if self.settings.gguf_file is not None:
            # Dequantizing a GGUF file takes long; do it once and copy the untouched weights per run.
            if self._pristine is None:
                self._pristine, self.tokenizer = self.loader(self.settings.model, gguf_file=self.settings.gguf_file)
            model = copy.deepcopy(self._pristine)
        else:
            model, tokenizer = self.loader(self.settings.model)
            if self.tokenizer is None:
                self.tokenizer = tokenizer
        return model if self.settings.device is None else model.to(self.settings.device)


def _read_cached(path: Path, run: StudyRun) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = read_json(path, "cached study run")
    except CheckpointError as error:
        logger.warning("Ignoring the unreadable cache file %s (%s); running it again.", path, error)
        return None
    if record.get("key") != run.key or record.get("status") != "ok":
        return None
    return record


class _HeldApart:
    """Calibration files with each evaluated domain's held-apart rows removed, written once per study."""

    def __init__(self, settings: StudySettings, output: Path) -> None:
        self.settings = settings
        self.folder = output / "held_apart"
        self._files: dict[str, str | None] = {}

    def data_files(self, run: StudyRun) -> str | None:
        """The file ``run`` calibrates on instead of its source's own, or `None` (no domain of its own evaluated)."""
        from ..evaluation.domains import domain_split

        source = run.calibration
        if f"ppl:{source}".lower() not in {task.lower() for task in run.eval}:
            return None
        if source not in self._files:
            split = domain_split(source, self.settings.data_dir)
            path = None
            if split.calibration_rows is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                path = self.folder / f"{source.replace('@', '-')}.jsonl"
                text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split.calibration_rows)
                _write_text_atomic(path, text)
            shared = split.hashes & split.calibration_hashes
            if shared:  # domain_split drops such rows; this is the study's own check that it did
                raise CalibPruneError(f"Domain '{source}': {len(shared)} evaluation rows are also calibration rows.")
            logger.info("%s; calibration rows: %d (sha256 checked: none shared).", split.description, len(split.calibration_hashes))
            self._files[source] = None if path is None else str(path)
        return self._files[source]


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _prune(
    model: torch.nn.Module, tokenizer: Any, run: StudyRun, settings: StudySettings, data_files: str | None
) -> dict[str, Any]:
    from ..calibration import CalibrationConfig
    from ..config import PruningConfig
    from ..pruner import CalibratedPruner

    calibration = CalibrationConfig(
        sources=run.calibration, format=run.format, data_dir=settings.data_dir, data_files=data_files
    )
    config = PruningConfig(
        method=run.method,
        sparsity=settings.sparsity,
        pattern=settings.pattern,
        calibration=calibration,
        num_samples=settings.num_samples,
        seq_len=settings.seq_len,
        seed=run.seed,
    )
    CalibratedPruner(config, tokenizer=tokenizer).prune(model)
    report = model.pruning_report
    return {
        "overall_sparsity": report.overall_sparsity,
        "prune_seconds": report.seconds,
        "calibration_fingerprint": report.calibration,
        "calibration_sha256": (report.calibration or {}).get("token_sha256", "")[:16],
    }


def run_study(
    settings: StudySettings,
    output_dir: str | os.PathLike,
    *,
    loader: Callable[..., tuple[torch.nn.Module, Any]] | None = None,
    deadline: float | None = None,
) -> StudyResult:
    """Run (or resume) the study described by ``settings`` and write its tables, plots and summary.

    Args:
        settings (`StudySettings`): the grid and evaluation.
        output_dir (`str`): where ``runs/``, ``results.csv``, ``results.md``, ``*.png`` and ``summary.txt`` go.
        loader (`Callable`, *optional*): ``loader(model, gguf_file=None) -> (model, tokenizer)``; defaults to
            :func:`hf_calibprune.models.loading.load_model_and_tokenizer` in float32, with a tokenizer required.
        deadline (`float`, *optional*): a :func:`time.monotonic` time; a run is not started when the longest run
            so far (pruned in this call, or timed in a cached record) would end after it. Skipped runs are left
            out of the outputs and named in the notes, and a later call with a later deadline resumes them.
    """
    from ..evaluation import evaluate_model, headline_metrics, parse_tasks

    parse_tasks(list(settings.eval) + list(settings.language_eval()))  # unknown task names fail before any pruning
    plan = plan_study(settings)
    output = Path(output_dir)
    runs_dir = output / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "study.json", {"settings": settings_to_dict(settings), "notes": plan.notes})
    if loader is None:
        from ..models.loading import load_model_and_tokenizer

        loader = partial(load_model_and_tokenizer, dtype=torch.float32, require_tokenizer=True)
    models = _ModelSource(settings, loader)
    held_apart = _HeldApart(settings, output)

    records: list[dict[str, Any]] = []
    pruned = reused = failed = 0
    skipped: list[str] = []
    longest = 0.0
    for index, run in enumerate(plan.runs, start=1):
        path = runs_dir / f"{run.run_id}.json"
        cached = _read_cached(path, run)
        if cached is not None:
            reused += 1
            records.append(cached)
            # A resumed study judges its budget by the runs it already timed, the dense one included: a pruned
            # run evaluates the same tasks, so the dense run's time is a lower bound of it.
            longest = max(longest, float(cached.get("prune_seconds") or 0) + float(cached.get("eval_seconds") or 0))
            logger.info("[%d/%d] %s: cached, skipped.", index, len(plan.runs), run.run_id)
            continue
        if deadline is not None and (skipped or time.monotonic() + longest > deadline):
            skipped.append(run.run_id)
            continue
        run_started = time.monotonic()
        logger.info("[%d/%d] %s: %s", index, len(plan.runs), run.run_id, "evaluating the dense model" if run.is_dense else "pruning")
        record: dict[str, Any] = {
            "run_id": run.run_id,
            "key": run.key,
            "method": run.method,
            "calibration": run.calibration,
            "format": run.format,
            "requested_format": run.requested_format,
            "kind": run.kind,
            "seed": run.seed,
            "sparsity": 0.0 if run.is_dense else settings.sparsity,
            "pattern": "-" if run.is_dense else settings.pattern,
        }
        model = None
        try:
            model = models.fresh()
            if run.is_dense:
                record.update(overall_sparsity=0.0, prune_seconds=0.0, calibration_fingerprint=None, calibration_sha256="")
            else:
                record.update(_prune(model, models.tokenizer, run, settings, held_apart.data_files(run)))
            record["parameters"] = sum(p.numel() for p in model.parameters())  # structured patterns shrink it
            started = time.perf_counter()
            results = evaluate_model(
                model,
                models.tokenizer,
                list(run.eval),
                data_dir=settings.data_dir,
                limit=settings.limit,
                seq_len=settings.eval_seq_len or settings.seq_len,
                batch_size=settings.batch_size,
            )
            record.update(
                status="ok",
                eval_seconds=round(time.perf_counter() - started, 3),
                metrics=headline_metrics(results),
                results=results,
            )
            write_json_atomic(path, record)
            pruned += 0 if run.is_dense else 1
        except CalibPruneError as error:
            failed += 1
            record.update(status="error", error=str(error), metrics={})
            logger.error("%s failed: %s", run.run_id, error)
        finally:
            del model
            gc.collect()
        longest = max(longest, time.monotonic() - run_started)
        records.append(record)
    notes = list(plan.notes)
    if skipped:
        notes.append(
            f"{len(skipped)} of {len(plan.runs)} runs were not started because the time budget would have run out "
            f"(first: {skipped[0]}); rerun with more time to resume them."
        )
    logger.info("Study: pruned %d run(s), reused %d cached run(s), %d failed, %d skipped.", pruned, reused, failed, len(skipped))
    files = write_outputs(records, output, notes=notes, baseline=settings.baseline_source)
    return StudyResult(
        records=records, plan=plan, pruned=pruned, reused=reused, failed=failed, files=files, skipped=len(skipped)
    )
