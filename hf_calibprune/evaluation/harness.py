"""Zero-shot accuracy through lm-evaluation-harness, on the in-memory model, reading local data files.

The Wanda paper reports seven zero-shot tasks of lm-evaluation-harness (BoolQ, RTE, HellaSwag,
WinoGrande, ARC-e, ARC-c, OpenBookQA). Each task's own YAML config from the installed ``lm_eval`` is
loaded unchanged (prompt, choices, target, metrics, ``process_docs``), and only its dataset location
is replaced by a local file of the data mirror, so the harness never reaches for the Hub. Where the
local copy's schema differs from the Hub one (RTE's field names, OpenBookQA's TSV), a field mapping is
added. The model is wrapped with ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=...)``.

Install with ``pip install hf_calibprune[eval]``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .data import EvaluationError, find_data_file

__all__ = ["WANDA_ZERO_SHOT_TASKS", "HARNESS_TASKS", "local_task_config", "evaluate_harness"]

logger = logging.getLogger(__name__)

WANDA_ZERO_SHOT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _rte_docs(dataset: Any) -> Any:
    # The local copy is SuperGLUE's (premise/hypothesis/"entailment"); lm-eval's GLUE config reads
    # sentence1/sentence2 and 0 = entailment.
    def convert(doc: dict[str, Any]) -> dict[str, Any]:
        label = doc["label"]
        if isinstance(label, str):
            label = 0 if label == "entailment" else 1
        return {"sentence1": doc["premise"], "sentence2": doc["hypothesis"], "label": int(label)}

    return dataset.map(convert, remove_columns=dataset.column_names)


_OBQA_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)")


def _openbookqa_docs(dataset: Any) -> Any:
    # The local copy is the original TSV: "Question Stem", "Choices" as "(A) x (B) y ...", "Answer Key".
    def convert(doc: dict[str, Any]) -> dict[str, Any]:
        pairs = _OBQA_CHOICE.findall(doc["Choices"])
        return {
            "id": doc["ID"],
            "question_stem": doc["Question Stem"],
            "choices": {"text": [text for _, text in pairs], "label": [letter for letter, _ in pairs]},
            "answerKey": doc["Answer Key"].strip(),
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


# task → (lm-eval YAML under lm_eval/tasks, local folder, file patterns, split, builder, extra overrides)
HARNESS_TASKS: dict[str, dict[str, Any]] = {
    "boolq": {"yaml": "super_glue/boolq/default.yaml", "source": "boolq", "files": ("validation*.json*",), "split": "validation"},
    "rte": {
        "yaml": "glue/rte/default.yaml",
        "source": "rte",
        "files": ("val.jsonl", "validation*.json*"),
        "split": "validation",
        "process_docs": _rte_docs,
    },
    "hellaswag": {"yaml": "hellaswag/hellaswag.yaml", "source": "hellaswag", "files": ("*val*.json*",), "split": "validation"},
    "winogrande": {"yaml": "winogrande/default.yaml", "source": "winogrande", "files": ("validation*.json*", "dev*.json*"), "split": "validation"},
    "arc_easy": {"yaml": "arc/arc_easy.yaml", "source": "arc", "files": ("arc_easy_test*.json*",), "split": "test"},
    "arc_challenge": {"yaml": "arc/arc_challenge.yaml", "source": "arc", "files": ("arc_challenge_test*.json*",), "split": "test"},
    "openbookqa": {
        "yaml": "openbookqa/openbookqa.yaml",
        "source": "openbookqa",
        "files": ("test.tsv", "test*.json*"),
        "split": "test",
        "process_docs": _openbookqa_docs,
    },
}


def _import_lm_eval() -> Any:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as error:
        raise EvaluationError(
            "lm-evaluation-harness is not installed; install it with `pip install hf_calibprune[eval]` "
            f"(or `pip install lm_eval`). ({error})"
        ) from error
    return lm_eval


def local_task_config(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """lm-eval's own config for task ``name`` with its dataset pointed at the local mirror's file.

    Args:
        name (`str`): one of :data:`WANDA_ZERO_SHOT_TASKS`.
        data_dir (`str`, *optional*): local mirror; defaults as in :func:`~hf_calibprune.evaluation.data.resolve_data_dir`.
    """
    if name not in HARNESS_TASKS:
        raise EvaluationError(
            f"No local lm-eval config for task '{name}'. Local configs exist for: {', '.join(HARNESS_TASKS)}."
        )
    lm_eval = _import_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    spec = HARNESS_TASKS[name]
    yaml_path = Path(lm_eval.__file__).parent / "tasks" / spec["yaml"]
    if not yaml_path.is_file():
        raise EvaluationError(f"The installed lm_eval has no '{spec['yaml']}'; install lm_eval>=0.4.")
    config = load_yaml(yaml_path, resolve_func=True)
    path = find_data_file(data_dir, spec["source"], spec["files"], what=f"lm-eval task '{name}'")
    builder = "csv" if path.suffix == ".tsv" else "json"
    kwargs: dict[str, Any] = {"data_files": {spec["split"]: str(path)}}
    if builder == "csv":
        kwargs["delimiter"] = "\t"
    config.pop("tag", None)
    config.update(
        dataset_path=builder,
        dataset_name=None,
        dataset_kwargs=kwargs,
        training_split=None,
        validation_split=spec["split"] if spec["split"] == "validation" else None,
        test_split=spec["split"] if spec["split"] == "test" else None,
        fewshot_split=None,
    )
    extra: Callable[[Any], Any] | None = spec.get("process_docs")
    if extra is not None:
        inner = config.get("process_docs")
        config["process_docs"] = extra if inner is None else (lambda dataset: inner(extra(dataset)))
    config.setdefault("metadata", {})
    config["metadata"] = {**config["metadata"], "local_data_file": str(path)}
    return config


def evaluate_harness(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] = WANDA_ZERO_SHOT_TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run lm-evaluation-harness tasks on the in-memory ``model`` with local data.

    Args:
        model (`transformers.PreTrainedModel`): the (pruned) causal LM.
        tokenizer: its tokenizer.
        tasks (`Sequence[str]`, *optional*, defaults to the Wanda paper's seven zero-shot tasks).
        data_dir (`str`, *optional*): local mirror with ``boolq/``, ``rte/``, ``hellaswag/``, ``winogrande/``,
            ``arc/`` and ``openbookqa/``.
        limit (`int`, *optional*): documents per task (lm-eval's ``limit``).
        batch_size (`int`, *optional*, defaults to 8).
        num_fewshot (`int`, *optional*, defaults to 0): the Wanda paper is zero-shot.

    Returns:
        `dict[str, dict]`: per task, lm-eval's metrics (``acc``, ``acc_norm`` where defined, their
        ``_stderr``) plus ``n`` (documents evaluated), ``file``, ``scores`` (each document's ``acc``, in
        document order) and ``choices`` (answer options of the first document, for the chance level).
    """
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    configs = [local_task_config(name, data_dir) for name in tasks]
    device = str(next(model.parameters()).device)
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=configs,
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,
        )
    finally:
        model.train(was_training)
    if output is None:  # non-zero ranks in distributed runs
        return {}
    results: dict[str, dict[str, Any]] = {}
    for config in configs:
        name = config["task"]
        raw = output["results"].get(name, {})
        metrics = {key.split(",")[0]: value for key, value in raw.items() if "," in key and isinstance(value, (int, float))}
        n_samples = output.get("n-samples", {}).get(name, {})
        metrics["n"] = n_samples.get("effective", n_samples.get("original"))
        metrics["file"] = config["metadata"]["local_data_file"]
        samples = sorted(output.get("samples", {}).get(name, []), key=lambda sample: sample.get("doc_id", 0))
        metrics["scores"] = [float(sample["acc"]) for sample in samples if "acc" in sample]
        if samples:
            metrics["choices"] = len(samples[0].get("arguments") or ())
        results[name] = metrics
    return results
