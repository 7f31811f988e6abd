"""One entry point over every evaluation: task names in, a results dict and a table out.

Task names (``--tasks`` on the command line):

* ``wikitext2``, ``c4``: perplexity (:func:`~hf_calibprune.evaluation.perplexity.perplexity`);
  ``ppl:PATH`` for a local text or JSON Lines file; ``ppl:SOURCE`` (``ppl:gsm8k``, ``ppl:race``, ``ppl:c4``,
  ``ppl:ud@de``) for the held-apart text of a calibration source's domain
  (:mod:`~hf_calibprune.evaluation.domains`).
* ``gsm8k``, ``svamp``, ``mawps``, ``anli_r1``, ``esnli``, ``rte``, ``boolq``, ``commonsense_qa``, ``race``,
  ``winogrande``: the study's few-shot generation accuracy; ``NAME:cot`` with chain-of-thought exemplars.
* ``lm-eval:NAME`` (``boolq``, ``rte``, ``hellaswag``, ``winogrande``, ``arc_easy``, ``arc_challenge``,
  ``openbookqa``) or ``lm-eval:zeroshot`` for all seven: lm-evaluation-harness zero-shot accuracy.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..registry import suggest
from .data import EvaluationError
from .domains import domain_split, is_domain
from .fewshot import FEWSHOT_TASKS, evaluate_fewshot
from .harness import HARNESS_TASKS, WANDA_ZERO_SHOT_TASKS, evaluate_harness
from .perplexity import PERPLEXITY_SOURCES, perplexity_details

__all__ = ["TaskSpec", "parse_tasks", "evaluate_model", "headline_metrics", "format_results_table"]

logger = logging.getLogger(__name__)

_HARNESS_PREFIXES = ("lm-eval:", "lm_eval:", "lmeval:")


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task name.

    Args:
        name (`str`): the key results are stored under (``"wikitext2"``, ``"gsm8k:cot"``, ``"lm-eval:boolq"``).
        kind (`str`): ``"perplexity"``, ``"domain"`` (perplexity on a source's held-apart text), ``"fewshot"``
            or ``"harness"``.
        target (`str`): source name, path, few-shot task or lm-eval task.
        cot (`bool`): chain-of-thought exemplars (few-shot only).
    """

    name: str
    kind: str
    target: str
    cot: bool = False


def parse_tasks(tasks: str | Sequence[str]) -> list[TaskSpec]:
    """Parse ``"wikitext2,gsm8k,lm-eval:zeroshot"`` (or a list) into :class:`TaskSpec` objects."""
    names = [part.strip() for part in (tasks.split(",") if isinstance(tasks, str) else tasks) if part.strip()]
    if not names:
        raise EvaluationError("No evaluation task given; pass e.g. --tasks wikitext2,gsm8k.")
    specs: list[TaskSpec] = []
    for name in names:
        lowered = name.lower()
        prefix = next((p for p in _HARNESS_PREFIXES if lowered.startswith(p)), None)
        if prefix is not None:
            target = name[len(prefix) :]
            targets = WANDA_ZERO_SHOT_TASKS if target in ("zeroshot", "wanda", "all") else (target,)
            for item in targets:
                if item not in HARNESS_TASKS:
                    raise EvaluationError(
                        f"Unknown lm-eval task '{item}'.{suggest(item, list(HARNESS_TASKS))} "
                        f"Local configs exist for: {', '.join(HARNESS_TASKS)} (or lm-eval:zeroshot for all)."
                    )
                specs.append(TaskSpec(f"lm-eval:{item}", "harness", item))
        elif lowered in PERPLEXITY_SOURCES:
            specs.append(TaskSpec(lowered, "perplexity", lowered))
        elif lowered.startswith("ppl:") and is_domain(name[4:]) and not os.path.isfile(name[4:]):
            specs.append(TaskSpec(name, "domain", name[4:]))
        elif lowered.startswith("ppl:"):
            specs.append(TaskSpec(name, "perplexity", name[4:]))
        else:
            base, _, variant = lowered.partition(":")
            if base in FEWSHOT_TASKS and variant in ("", "cot"):
                specs.append(TaskSpec(lowered, "fewshot", base, cot=variant == "cot"))
            elif os.path.isfile(name):
                specs.append(TaskSpec(name, "perplexity", name))
            else:
                known = [*PERPLEXITY_SOURCES, *FEWSHOT_TASKS.names()]
                raise EvaluationError(
                    f"Unknown evaluation task '{name}'.{suggest(base, known)} Known: {', '.join(known)}, "
                    "NAME:cot for few-shot tasks, ppl:PATH, lm-eval:NAME or lm-eval:zeroshot."
                )
    return specs


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str | Sequence[str],
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on each task; returns ``{task name: metrics}``.

    Args:
        model (`torch.nn.Module`): causal LM.
        tokenizer: its tokenizer.
        tasks (`str` or `Sequence[str]`): comma-separated names or a list (see the module docstring).
        data_dir (`str`, *optional*): local data mirror (``<source>/<files>``).
        limit (`int`, *optional*): perplexity windows, few-shot rows or lm-eval documents per task.
        seq_len (`int`, *optional*): perplexity window length.
        batch_size (`int`, *optional*, defaults to 8): few-shot prompts / lm-eval requests per batch
            (perplexity uses ``max(1, batch_size // 4)`` windows per batch).

    Returns:
        `dict[str, dict]`: perplexity tasks hold ``perplexity``, ``windows``, ``seq_len``; few-shot tasks
        ``accuracy``, ``n``, ``shots``; lm-eval tasks ``acc`` (and ``acc_norm``), ``n``. Each has ``seconds``.
    """
    specs = parse_tasks(tasks)
    results: dict[str, dict[str, Any]] = {}
    harness = [spec for spec in specs if spec.kind == "harness"]
    for spec in specs:
        if spec.kind == "harness":
            continue
        started = time.perf_counter()
        if spec.kind in ("perplexity", "domain"):
            split = domain_split(spec.target, data_dir) if spec.kind == "domain" else None
            metrics = perplexity_details(
                model,
                tokenizer,
                split.texts if split is not None else spec.target,
                seq_len=seq_len,
                batch_size=max(1, batch_size // 4),
                limit=limit,
                data_dir=data_dir,
            )
            if split is not None:
                metrics["text"] = split.description
        else:
            metrics = evaluate_fewshot(
                model, tokenizer, spec.target, data_dir=data_dir, limit=limit, batch_size=batch_size, cot=spec.cot
            )
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        results[spec.name] = _annotate(spec, metrics)
        logger.info("%s: %s", spec.name, _headline_text(spec.name, metrics))
    if harness:
        started = time.perf_counter()
        outputs = evaluate_harness(
            model, tokenizer, [spec.target for spec in harness], data_dir=data_dir, limit=limit, batch_size=batch_size
        )
        seconds = round(time.perf_counter() - started, 3)
        for spec in harness:
            metrics = dict(outputs.get(spec.target, {}))
            metrics["seconds"] = seconds
            results[spec.name] = _annotate(spec, metrics)
    return results


def _annotate(spec: TaskSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    # "metric", "value" and "dataset" are what the model card's model-index reads from the report.
    if "perplexity" in metrics:
        metrics.update(metric="perplexity", value=metrics["perplexity"])
    elif "accuracy" in metrics:
        metrics.update(metric="accuracy", value=metrics["accuracy"])
    elif "acc" in metrics:
        metrics.update(metric="accuracy", value=metrics["acc"])
    metrics["dataset"] = spec.target if spec.kind != "perplexity" or spec.target in PERPLEXITY_SOURCES else "text"
    return metrics


def headline_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One number per task, keyed ``"<task>/ppl"`` (lower is better) or ``"<task>/acc"`` (higher is better)."""
    flat: dict[str, float] = {}
    for name, metrics in results.items():
        if "perplexity" in metrics:
            flat[f"{name}/ppl"] = float(metrics["perplexity"])
        elif "accuracy" in metrics:
            flat[f"{name}/acc"] = float(metrics["accuracy"])
        elif "acc" in metrics:
            flat[f"{name}/acc"] = float(metrics["acc"])
            if "acc_norm" in metrics:
                flat[f"{name}/acc_norm"] = float(metrics["acc_norm"])
    return flat


def _headline_text(name: str, metrics: dict[str, Any]) -> str:
    return ", ".join(f"{key.split('/')[-1]}={value:.4f}" for key, value in headline_metrics({name: metrics}).items())


def format_results_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: task, metric, value, n, seconds."""
    lines = [f"{'task':<24} {'metric':<9} {'value':>10} {'n':>6} {'seconds':>8}", "-" * 61]
    for name, metrics in results.items():
        n = metrics.get("n", metrics.get("windows", ""))
        for key, value in headline_metrics({name: metrics}).items():
            shown = f"{value:10.4f}" if math.isfinite(value) else f"{value!s:>10}"
            lines.append(f"{name:<24} {key.split('/')[-1]:<9} {shown} {n!s:>6} {metrics.get('seconds', 0):8.1f}")
    return "\n".join(lines)
