"""The model card (README.md) of a pruned checkpoint, written from the :class:`PruningReport`.

Every number in the card is a measured one from the report (achieved sparsity, calibration fingerprint,
evaluation results), never the request. The wording lives in one Jinja template,
``templates/modelcard_template.md`` (:data:`TEMPLATE`), rendered with huggingface_hub's
``ModelCard.from_template`` from values this module prepares; a new row is a new template line. The metadata is a
:class:`~huggingface_hub.ModelCardData`, so the Hub parses it back to the same values. An existing README is
merged, not clobbered: the user's text and metadata are kept, tags are united, and only the section between
:data:`START_MARKER` and :data:`END_MARKER` is replaced (the approach of peft's ``create_or_update_model_card``).

``library_name`` is ``transformers``: a dense checkpoint loads with plain ``AutoModelForCausalLM`` and a
compact one through transformers' ``from_pretrained`` once hf_calibprune is imported, so the Hub's
"Use this model" snippet is the right one; the ``hf_calibprune`` tag makes the checkpoints findable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .publication import HUB_ID_RE, Publication, is_hub_id, prepare_publication
from .structured_card import structure_intro, structure_lines

if TYPE_CHECKING:  # huggingface_hub's card module is slow to import: loaded when a card is built
    from huggingface_hub import ModelCard, ModelCardData

__all__ = [
    "START_MARKER",
    "END_MARKER",
    "CITATIONS",
    "TEMPLATE",
    "build_model_card",
    "card_metadata",
    "calibration_dataset_ids",
    "evaluation_rows",
    "base_model_license",
    "merge_model_card",
    "render_model_card",
]

logger = logging.getLogger(__name__)

START_MARKER = "<!-- hf_calibprune:start (this section is rewritten by hf_calibprune; edit outside it) -->"
END_MARKER = "<!-- hf_calibprune:end -->"
#: The card's wording: a Jinja template rendered with huggingface_hub's ``ModelCard.from_template``.
TEMPLATE = Path(__file__).with_name("templates") / "modelcard_template.md"
_SECTION_RE = re.compile(r"<!-- hf_calibprune:start[^>]*-->.*?<!-- hf_calibprune:end -->", re.DOTALL)

CITATIONS: dict[str, str] = {
    "magnitude": "Han et al., *Learning both Weights and Connections for Efficient Neural Networks*, NeurIPS 2015, "
    "[arXiv:1506.02626](https://arxiv.org/abs/1506.02626)",
    "wanda": "Sun et al., *A Simple and Effective Pruning Approach for Large Language Models* (Wanda), ICLR 2024, "
    "[arXiv:2306.11695](https://arxiv.org/abs/2306.11695)",
    "sparsegpt": "Frantar & Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot*, "
    "ICML 2023, [arXiv:2301.00774](https://arxiv.org/abs/2301.00774)",
    "owl": "Yin et al., *Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High "
    "Sparsity*, ICML 2024, [arXiv:2310.05175](https://arxiv.org/abs/2310.05175)",
    "calibration": "Bandari et al., *Is C4 Dataset Optimal for Pruning? An Investigation of Calibration Data for "
    "LLM Pruning*, EMNLP 2024, [arXiv:2410.07461](https://arxiv.org/abs/2410.07461)",
}

# Calibration source names of the catalogue -> their Hub dataset ids (for the card's ``datasets`` metadata).
_KNOWN_DATASETS: dict[str, str] = {
    "c4": "allenai/c4",
    "wikitext2": "Salesforce/wikitext",
    "wikitext": "Salesforce/wikitext",
    "wikitext-2": "Salesforce/wikitext",
    "gsm8k": "openai/gsm8k",
    "ptb": "ptb-text-only/ptb_text_only",
    "pile": "monology/pile-uncopyrighted",
    "redpajama": "togethercomputer/RedPajama-Data-1T-Sample",
    "slimpajama": "cerebras/SlimPajama-627B",
    "alpaca": "tatsu-lab/alpaca",
    "dolly": "databricks/databricks-dolly-15k",
    "openwebtext": "Skylion007/openwebtext",
    "fineweb-edu": "HuggingFaceFW/fineweb-edu",
    "mathqa": "allenai/math_qa",
    "arc-challenge": "allenai/ai2_arc",
    "arc-easy": "allenai/ai2_arc",
    "arc": "allenai/ai2_arc",
    "hellaswag": "Rowan/hellaswag",
    "boolq": "google/boolq",
    "winogrande": "allenai/winogrande",
    "piqa": "ybisk/piqa",
    "openbookqa": "allenai/openbookqa",
    "commonsenseqa": "tau/commonsense_qa",
    "svamp": "ChilleD/SVAMP",
    "mawps": "MU-NLPC/Calc-mawps",
    "rte": "nyu-mll/glue",
    "mnli": "nyu-mll/glue",
}
_ID_KEYS = ("hub_id", "hub_ids", "dataset_id", "dataset_ids", "datasets", "path", "name", "source")
_NESTED_KEYS = ("components", "sources", "mixture", "parts")


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    raise TypeError(f"Expected a dict or an object with to_dict(), got {type(obj).__name__}.")


def _hub_id(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    key = value.strip().lower().split(":", 1)[0]  # "gsm8k:icl" names the gsm8k source in ICL format
    if key in _KNOWN_DATASETS:
        return _KNOWN_DATASETS[key]
    if HUB_ID_RE.match(value) and not os.path.exists(value) and not value.endswith((".json", ".jsonl", ".txt")):
        return value
    return None


def calibration_dataset_ids(fingerprint: Mapping[str, Any] | None) -> list[str]:
    """Hub dataset ids named by a calibration fingerprint (mixtures included), in order, without duplicates.

    Explicit ids (``hub_id``, ``dataset_id``, ``datasets``) are used as they are; catalogue names such as
    ``"c4"`` map to their Hub ids; local files, in-memory lists and generated text name no dataset.
    """
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, Mapping):
            for key in _ID_KEYS:
                value = node.get(key)
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    hub_id = _hub_id(item)
                    if hub_id and hub_id not in found:
                        found.append(hub_id)
                if key in ("hub_id", "hub_ids", "dataset_id", "dataset_ids", "datasets") and value:
                    return  # explicit ids win over the source's display name
            for key in _NESTED_KEYS:
                value = node.get(key)
                if isinstance(value, (list, tuple)):
                    for item in value:
                        visit(item)
                elif isinstance(value, Mapping):
                    for item in value.values():
                        visit(item)

    visit(fingerprint or {})
    return found


def _metric_type(name: str) -> str:
    lowered = name.lower()
    if "ppl" in lowered or "perplexity" in lowered:
        return "perplexity"
    if "acc" in lowered:
        return "accuracy"
    return re.sub(r"[^a-z0-9_-]+", "_", lowered).strip("_") or "score"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def evaluation_rows(evaluation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Normalize a report's ``evaluation`` dict into rows ``{name, metric, dataset, dense, pruned}``.

    Accepted shapes (``dense`` may be absent):

    * ``{"wikitext2_perplexity": 15.2}``
    * ``{"wikitext2": {"metric": "perplexity", "dense": 12.1, "pruned": 15.2, "dataset": "wikitext"}}``
    * ``{"dense": {"wikitext2_perplexity": 12.1}, "pruned": {"wikitext2_perplexity": 15.2}}``
    """
    evaluation = dict(evaluation or {})
    rows: dict[str, dict[str, Any]] = {}
    if isinstance(evaluation.get("pruned"), Mapping):
        dense = evaluation.get("dense") if isinstance(evaluation.get("dense"), Mapping) else {}
        for name, value in evaluation["pruned"].items():
            if _number(value) is not None:
                rows[name] = {"name": name, "pruned": _number(value), "dense": _number(dense.get(name))}
    else:
        for name, value in evaluation.items():
            if _number(value) is not None:
                rows[name] = {"name": name, "pruned": _number(value), "dense": None}
            elif isinstance(value, Mapping):
                pruned = value.get("pruned", value.get("value", value.get("sparse")))
                if _number(pruned) is None:
                    continue
                rows[name] = {
                    "name": name,
                    "pruned": _number(pruned),
                    "dense": _number(value.get("dense", value.get("baseline"))),
                    "metric": value.get("metric"),
                    "dataset": value.get("dataset"),
                }
    out = []
    for row in rows.values():
        row["metric"] = row.get("metric") or _metric_type(row["name"])
        row["dataset"] = row.get("dataset") or re.split(r"[_/ ]", row["name"])[0]
        out.append(row)
    return out


def base_model_license(name_or_path: str | os.PathLike | None) -> str | None:
    """The ``license`` of a base model's card when it can be read without the network (local dir or HF cache)."""
    if not name_or_path:
        return None
    readme: str | None = None
    path = Path(name_or_path)
    if path.is_dir() and (path / "README.md").is_file():
        readme = str(path / "README.md")
    elif HUB_ID_RE.match(str(name_or_path)):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(name_or_path), "README.md")
            readme = cached if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - best effort, the card just lacks a license
            readme = None
    if readme is None:
        return None
    from huggingface_hub import ModelCard

    try:
        license_ = ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except Exception:  # noqa: BLE001
        return None
    return license_ if isinstance(license_, str) else None


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", str(text).lower()).strip("-")


def card_metadata(
    report: Mapping[str, Any],
    *,
    base_model: str | None = None,
    license: str | None = None,
    model_name: str | None = None,
    checkpoint_format: str | None = None,
) -> ModelCardData:
    """The YAML metadata of the card, from the report's measured values."""
    from huggingface_hub import EvalResult, ModelCardData

    method = report.get("method")
    pattern = report.get("pattern")
    tags = ["pruned", "sparse", "hf_calibprune"]
    if method:
        tags.append(_tag(method))
    if pattern:
        tags.append("unstructured-sparsity" if pattern == "unstructured" else f"{_tag(pattern)}-sparsity")
    allocation = report.get("allocation") or (report.get("config") or {}).get("allocation")
    if allocation and allocation != "uniform":
        tags.append(_tag(allocation))
    if checkpoint_format == "compact":
        tags.append("hf_calibprune-compact")
    datasets = calibration_dataset_ids(report.get("calibration"))
    rows = evaluation_rows(report.get("evaluation"))
    eval_results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=_KNOWN_DATASETS.get(str(row["dataset"]).lower(), str(row["dataset"])),
            dataset_name=str(row["dataset"]),
            metric_type=str(row["metric"]),
            metric_value=row["pruned"],
            metric_name=str(row["name"]),
        )
        for row in rows
    ]
    if not is_hub_id(base_model):
        base_model = None  # a local path is not a Hub id the metadata may name
    return ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,
        tags=tags,
        datasets=datasets or None,
        model_name=(model_name or _default_model_name(base_model, report)) if eval_results else None,
        eval_results=eval_results or None,
    )


def _default_model_name(base_model: str | None, report: Mapping[str, Any]) -> str:
    base = (base_model or "model").rsplit("/", 1)[-1]
    sparsity = report.get("overall_sparsity")
    suffix = f"-{report.get('method', 'pruned')}"
    if isinstance(sparsity, (int, float)):
        suffix += f"-{round(100 * sparsity)}pct"
    return base + suffix


def _pct(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{100 * number:.2f}%"


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–" if value is None else str(value)
    return f"{number:.4g}"


def _block_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    blocks = report.get("blocks") or []
    if blocks:
        return [
            (
                str(b.get("index", i)),
                _pct(b.get("requested_sparsity")),
                _pct(b.get("measured_sparsity")),
                _fmt(b.get("seconds")),
            )
            for i, b in enumerate(blocks)
        ]
    # No block records: aggregate the per-layer ones, weighting by parameter count.
    grouped: dict[Any, list[float]] = {}
    for layer in report.get("layers") or []:
        numel = math.prod(layer.get("shape") or [1])
        acc = grouped.setdefault(layer.get("block"), [0.0, 0.0, 0.0, 0.0])
        acc[0] += numel
        acc[1] += numel * float(layer.get("requested_sparsity") or 0)
        acc[2] += numel * float(layer.get("measured_sparsity") or 0)
        acc[3] += float(layer.get("seconds") or 0)
    return [
        (str(block), _pct(a[1] / a[0]), _pct(a[2] / a[0]), _fmt(a[3])) for block, a in grouped.items() if a[0]
    ]


def _scalar_items(mapping: Mapping[str, Any], first: tuple[str, ...]) -> list[tuple[str, str]]:
    keys = [k for k in first if k in mapping] + sorted(k for k in mapping if k not in first)
    items = []
    for key in keys:
        value = mapping[key]
        if isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, sort_keys=True, default=str)
            text = text if len(text) <= 200 else text[:197] + "..."
        else:
            text = str(value)
        items.append((key, text.replace("|", "\\|").replace("\n", " ")))
    return items


def _source_rows(calibration: Mapping[str, Any]) -> list[list[str]]:
    sources = [s for key in _NESTED_KEYS for s in (calibration.get(key) or []) if isinstance(s, Mapping)]
    rows = []
    shown = ("name", "source", "origin", "num_samples", "weight", "format")
    for source in sources:
        details = dict(_scalar_items({k: v for k, v in source.items() if k not in shown and v is not None}, ()))
        row = [
            source.get("name") or source.get("source") or "–",
            source.get("origin", "–"),
            source.get("num_samples", "–"),
            _fmt(source.get("weight")),
            source.get("format", "–"),
            ", ".join(f"{k}: {v}" for k, v in details.items()) or "–",
        ]
        rows.append([str(cell).replace("<", "&lt;").replace(">", "&gt;") for cell in row])
    return rows


def _citations(method: str, allocation: Any) -> list[str]:
    cited = [key for key in CITATIONS if key == str(method).lower()]
    if str(allocation).lower() == "owl":
        cited.append("owl")
    cited.append("calibration")
    return [CITATIONS[key] for key in cited]


def _execution_line(execution: Mapping[str, Any] | None) -> str | None:
    """How the prune ran, in one line: processes, backend, and each process's samples and devices."""
    if not execution or not execution.get("world_size"):
        return None
    backend = execution.get("backend")
    head = f"{execution['world_size']}" + (f" ({backend} backend)" if backend else "")
    parts = []
    for process in execution.get("processes") or []:
        start, stop = (list(process.get("samples") or []) + [0, 0])[:2]
        samples = f"samples {start}–{stop - 1}" if stop > start else "no samples"
        parts.append(f"rank {process.get('rank')}: {samples} on {', '.join(process.get('devices') or []) or '–'}")
    return head + (" — " + "; ".join(parts) if parts else "")


def _dense_rows(dense: list[Mapping[str, Any]]) -> list[tuple[str, int, int, str]]:
    """Weights left dense, one row per reason: (reason, count, weights, names when few)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for weight in dense:
        grouped.setdefault(str(weight.get("reason")), []).append(weight)
    return [
        (
            reason,
            len(weights),
            sum(int(w.get("numel") or 0) for w in weights),
            ", ".join(f"`{w.get('name')}`" for w in weights) if len(weights) <= 4 else "",
        )
        for reason, weights in sorted(grouped.items())
    ]


def _expert_rows(experts: Mapping[str, Mapping[str, list]]) -> list[tuple[str, int, str, int]]:
    """One row per experts module: (module, experts, routed tokens min / median / max, experts on all tokens)."""
    rows = []
    for module, summary in experts.items():
        tokens = sorted(int(t) for t in summary.get("tokens") or [])
        if not tokens:
            continue
        spread = f"{tokens[0]} / {tokens[len(tokens) // 2]} / {tokens[-1]}"
        rows.append((module, len(tokens), spread, sum(1 for s in summary.get("statistics") or [] if s == "all")))
    return rows


def _template_context(publication: Publication, checkpoint: Mapping[str, Any] | None) -> dict[str, Any]:
    """The values :data:`TEMPLATE` lays out; the wording lives in the template."""
    report = publication.report
    config = dict(publication.config or {})
    method = report.get("method") or config.get("method") or "unknown"
    calibration = dict(report.get("calibration") or {})
    scalars = {k: v for k, v in calibration.items() if k not in _NESTED_KEYS}
    first = ("source", "format", "num_samples", "seq_len", "seed", "shots", "token_sha256", "hash")
    return {
        "start_marker": START_MARKER,
        "end_marker": END_MARKER,
        "report": report,
        "model_label": publication.model_label,
        "method": method,
        "pattern": report.get("pattern") or config.get("pattern") or "unknown",
        "execution": _execution_line(report.get("execution")),
        "checkpoint": dict(checkpoint) if checkpoint else None,
        "block_rows": _block_rows(report) if not report.get("structure") else [],
        "structure_intro": structure_intro(report, publication.model_label, method),
        "structure_section": "\n".join(structure_lines(report)),
        "dense_rows": _dense_rows(report.get("dense_weights") or []),
        "expert_rows": _expert_rows(report.get("experts") or {}),
        "calibration": calibration,
        "calibration_rows": _scalar_items(scalars, first) if calibration else [],
        "source_rows": _source_rows(calibration),
        "calibration_datasets": calibration_dataset_ids(calibration) if calibration else [],
        "local_files": publication.local_files,
        "evaluation_rows": evaluation_rows(report.get("evaluation")),
        "command": publication.command,
        "reproduce_model": publication.base_model or "<base model>",
        "config_json": json.dumps(config, indent=2, sort_keys=True, default=str) if config else None,
        "versions": report.get("versions") or {},
        "citations": _citations(method, report.get("allocation") or config.get("allocation")),
        "pct": _pct,
        "fmt": _fmt,
        "number": _number,
    }


def _section_of(card: ModelCard) -> str:
    match = _SECTION_RE.search(card.text)
    if match is None:  # pragma: no cover - the shipped template always holds both markers
        raise ValueError(f"{TEMPLATE} lost its {START_MARKER!r} / {END_MARKER!r} markers.")
    return match.group(0)


def merge_model_card(existing: str | None, data: ModelCardData, section: str) -> ModelCard:
    """Merge hf_calibprune's metadata and section into ``existing`` README text (or start a new card).

    The user's metadata keys win for ``base_model``, ``license``, ``library_name``, ``pipeline_tag`` and
    ``language``; tags are united; ``datasets`` and the evaluation results (model-index) are hf_calibprune's,
    because they come from the report. The user's text is kept; the old hf_calibprune section is replaced in
    place, or the new one appended.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if not existing or not existing.strip():
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{section}\n")
    old = ModelCard(existing, ignore_metadata_errors=True)
    merged = old.data.to_dict()
    ours = data.to_dict()
    for key, value in ours.items():
        if key == "tags":
            user_tags = merged.get("tags") or []
            user_tags = [user_tags] if isinstance(user_tags, str) else list(user_tags)
            merged["tags"] = user_tags + [t for t in value if t not in user_tags]
        elif key in ("base_model", "license", "library_name", "pipeline_tag", "language") and merged.get(key):
            continue
        else:
            merged[key] = value
    if "model-index" not in ours:
        merged.pop("model-index", None)  # results of an earlier run no longer describe these weights
    card_data = ModelCardData(ignore_metadata_errors=True, **merged)
    text = old.text
    if _SECTION_RE.search(text):
        text = _SECTION_RE.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + section + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{text if text.startswith(chr(10)) else chr(10) + text}")


def render_model_card(
    publication: Publication,
    *,
    license: str | None = None,
    model_name: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    existing: str | None = None,
) -> ModelCard:
    """Render :data:`TEMPLATE` for a :class:`~hf_calibprune.hub.publication.Publication` (merged into ``existing``).

    Args:
        publication (`Publication`): the published report, config and command, and how to name the model.
        license (`str`, *optional*): license identifier for the metadata.
        model_name (`str`, *optional*): name used in the model-index.
        checkpoint (`dict`, *optional*): ``{"format", "size_ratio", "weights_bytes"}`` of the saved files.
        existing (`str`, *optional*): text of a README to merge into.

    Returns:
        :class:`huggingface_hub.ModelCard`
    """
    from huggingface_hub import ModelCard

    data = card_metadata(
        publication.report,
        base_model=publication.base_model,
        license=license,
        model_name=model_name,
        checkpoint_format=(checkpoint or {}).get("format"),
    )
    rendered = ModelCard.from_template(data, template_path=str(TEMPLATE), **_template_context(publication, checkpoint))
    card = ModelCard(rendered.content.rstrip("\n") + "\n")
    if not existing or not existing.strip():
        return card
    return merge_model_card(existing, data, _section_of(card))


def build_model_card(
    report: Any,
    config: Any = None,
    *,
    base_model: str | None = None,
    license: str | None = None,
    model_name: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    command: str | None = None,
    existing: str | None = None,
) -> ModelCard:
    """Build (or update) the model card of a pruned checkpoint.

    Local paths in ``report``, ``config`` and ``command`` are published as file names (see
    :mod:`hf_calibprune.hub.publication`).

    Args:
        report (`PruningReport` or `dict`): what pruning measured; every number in the card comes from it.
        config (`PruningConfig` or `dict`, *optional*): the config, shown for reproduction.
        base_model (`str`, *optional*): Hub id of the model that was pruned; a local directory is named "a local
            model" with the sha256 of its ``config.json``, or by the Hub id in that config. Its license is carried
            over when its card can be read offline and ``license`` is not given.
        license (`str`, *optional*): license identifier for the metadata.
        model_name (`str`, *optional*): name used in the model-index.
        checkpoint (`dict`, *optional*): ``{"format", "size_ratio", "weights_bytes"}`` of the saved files.
        command (`str`, *optional*): the command line that made the checkpoint.
        existing (`str`, *optional*): text of a README to merge into.

    Returns:
        :class:`huggingface_hub.ModelCard`
    """
    if license is None:
        license = base_model_license(base_model)
    publication = prepare_publication(
        _as_dict(report), _as_dict(config) if config is not None else None, command=command, base_model=base_model
    )
    return render_model_card(publication, license=license, model_name=model_name, checkpoint=checkpoint, existing=existing)
