"""``save_sparse``: a pruned model, its provenance and its model card, written atomically."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .atomic import atomic_directory
from .card import base_model_license, render_model_card
from .formats import FORMATS
from .publication import check_publishable, prepare_publication

__all__ = ["save_sparse", "CONFIG_FILE", "REPORT_FILE", "CARD_FILE"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "pruning_config.json"
REPORT_FILE = "pruning_report.json"
CARD_FILE = "README.md"
_CARD_KWARGS = ("base_model", "license", "model_name", "command")


def _to_dict(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    raise CheckpointError(f"Cannot serialize {type(obj).__name__}: expected a dict or an object with to_dict().")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _model_dir(model: Any) -> str | None:
    """Where the model was loaded from (a local directory or a Hub id), as transformers recorded it."""
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    return name if isinstance(name, str) and name else None


def _measured_report(model: Any) -> dict[str, Any]:
    """A minimal report measured from the weights, for a model that carries no ``pruning_report``."""
    import torch

    zeros, total = 0, 0
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return {"overall_sparsity": zeros / total if total else 0.0, "layers": [], "method": "unknown", "pattern": "unknown"}


def save_sparse(
    model: Any,
    save_directory: str | os.PathLike,
    format: str = "dense",
    tokenizer: Any = None,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    **kwargs: Any,
) -> Path:
    """Save a pruned model with its provenance and model card, atomically.

    Writes the weights (safetensors), ``config.json``, the tokenizer when given, ``pruning_config.json`` and
    ``pruning_report.json`` (from ``model.pruning_config`` / ``model.pruning_report``) and ``README.md``. Everything
    is written to a temporary sibling directory that is renamed into place at the end, so an interrupted save
    leaves an existing ``save_directory`` untouched.

    What is written is meant for publication: local files are named by their file name, with size and sha256
    (``local_files`` in the report and the card), and the model's local directory by ``base_model``, by the Hub id
    in its ``config.json``, or as "a local model" with the sha256 of that file. Before the directory is renamed
    into place, every file is searched for the absolute paths of the model directory, the calibration files and
    data directories and the user's home (:func:`~hf_calibprune.hub.publication.check_publishable`).

    Args:
        model (`PreTrainedModel`): the (pruned) model.
        save_directory (`str` or `os.PathLike`): where to save; must be absent or empty unless ``overwrite``.
        format (`str`, *optional*, defaults to `"dense"`): ``"dense"`` (exact zeros, loads with plain
            transformers anywhere) or ``"compact"`` (bitmask / 2-bit N:M indices plus kept values, about 0.56x per
            pruned bf16 tensor at 50 %; loads with ``AutoModelForCausalLM.from_pretrained`` after
            ``import hf_calibprune``).
        tokenizer (`PreTrainedTokenizerBase`, *optional*): saved beside the model.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty ``save_directory`` (atomically:
            the old one is renamed aside, the new one renamed in, then the old one deleted).
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`): passed to ``save_pretrained`` (the
            dense size of a shard; compact shards are smaller).
        kwargs: ``base_model``, ``license``, ``model_name``, ``command`` for the model card; anything else is
            passed to ``model.save_pretrained``.

    Returns:
        `Path`: the checkpoint directory. The measured size ratio of the weights is logged, written into the
        model card and returned by :func:`~hf_calibprune.load_pruning_info` (``info.checkpoint``).

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: unknown ``format``, a non-empty target without
            ``overwrite``, an unwritable location, a quantized model, or a file that would publish a private path
            (e.g. an existing README merged with ``overwrite=True`` that names one; the message names the file).
    """
    card_kwargs = {key: kwargs.pop(key) for key in _CARD_KWARGS if key in kwargs}
    writer = FORMATS.get(FORMATS.check(format))()
    config = _to_dict(getattr(model, "pruning_config", None))
    report = _to_dict(getattr(model, "pruning_report", None))
    if report is None:
        logger.warning(
            "The model has no `pruning_report` (it was not pruned by CalibratedPruner in this process); the model "
            "card shows the sparsity measured from its weights only."
        )
    if config is None and report is not None and isinstance(report.get("config"), dict):
        config = dict(report["config"])
    target = Path(save_directory)
    existing_card = target / CARD_FILE
    existing = existing_card.read_text(encoding="utf-8") if overwrite and existing_card.is_file() else None
    model_dir = _model_dir(model)
    base_model = card_kwargs.pop("base_model", None)
    license = card_kwargs.pop("license", None) or base_model_license(base_model or model_dir)
    publication = prepare_publication(
        report if report is not None else _measured_report(model),
        config,
        command=card_kwargs.pop("command", None),
        base_model=base_model,
        model_dir=model_dir,
    )
    with atomic_directory(target, overwrite=overwrite) as tmp:
        checkpoint = writer.write(model, tmp, max_shard_size=max_shard_size, report=report, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if publication.config is not None:
            _write_json(tmp / CONFIG_FILE, publication.config)
        if report is not None:
            _write_json(tmp / REPORT_FILE, publication.report)
        card = render_model_card(publication, license=license, checkpoint=checkpoint, existing=existing, **card_kwargs)
        card.save(tmp / CARD_FILE)
        check_publishable(tmp, publication.private, shown_as=target)
    logger.info(
        "Saved a %s checkpoint to %s (%d bytes of weights, %.3fx the dense size).",
        checkpoint["format"],
        target,
        checkpoint["weights_bytes"],
        checkpoint.get("size_ratio") or 1.0,
    )
    return target
