"""``load_pruning_info``: read back how a checkpoint or model was pruned."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CalibPruneError, CheckpointError
from .formats import QUANT_METHOD, weights_bytes
from .saving import CONFIG_FILE, REPORT_FILE

__all__ = ["PruningInfo", "load_pruning_info"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruningInfo:
    """Provenance of a pruned checkpoint or model.

    Args:
        config (`PruningConfig` or `dict`): the config; a plain dict when it cannot be rebuilt here (e.g. it named
            in-memory calibration data, which is not saved).
        report (`PruningReport` or `dict`): the measured report.
        checkpoint (`dict`): for a directory, ``format`` (``"dense"`` / ``"compact"``), ``weights_bytes`` and, for a
            compact one, the ``size_ratio`` measured when it was saved; empty for a model.
    """

    config: Any
    report: Any
    checkpoint: dict[str, Any] = field(default_factory=dict)


def _read(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"{what} not found: {path}. The directory was not written by hf_calibprune.save_sparse, or the file was "
            "lost in a copy; re-save the pruned model with save_sparse."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({error}); copy it again or re-save the model with save_sparse."
        ) from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}; re-save the model.")
    return data


def _as_config(data: dict[str, Any]) -> Any:
    try:
        from ..config import PruningConfig
    except ImportError:  # pragma: no cover - the core is always installed with the hub module
        return data
    try:
        return PruningConfig.from_dict(data)
    except CalibPruneError as error:
        logger.info("Returning pruning_config.json as a dict: %s", error)
        return data


def _as_report(data: dict[str, Any]) -> Any:
    try:
        from ..report import PruningReport
    except ImportError:  # pragma: no cover
        return data
    return PruningReport.from_dict(data)


def _checkpoint_facts(directory: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {"format": "dense"}
    config_path = directory / "config.json"
    if config_path.is_file():
        try:
            quantization = json.loads(config_path.read_text(encoding="utf-8")).get("quantization_config") or {}
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path} is truncated or corrupted ({error}); re-save the model.") from error
        if quantization.get("quant_method") == QUANT_METHOD:
            facts.update({"format": quantization.get("format", "compact"), "size_ratio": quantization.get("size_ratio")})
    try:
        facts["weights_bytes"] = weights_bytes(directory)
    except CheckpointError:
        pass
    return facts


def _download(repo_id: str, filename: str, **hub_kwargs: Any) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, **hub_kwargs))
    except Exception as error:  # noqa: BLE001 - any Hub failure is reported the same way
        raise CheckpointError(f"Could not read {filename} of '{repo_id}' from the Hub: {error}") from error


def load_pruning_info(dir_or_model: Any, **hub_kwargs: Any) -> PruningInfo:
    """Read the pruning config and report of a saved checkpoint, a Hub repo, or a pruned model.

    Args:
        dir_or_model (`str`, `os.PathLike` or `PreTrainedModel`): a directory written by
            :func:`~hf_calibprune.save_sparse`, a Hub repo id holding one, or a model pruned by
            :class:`~hf_calibprune.CalibratedPruner` (or loaded from such a directory).
        hub_kwargs: passed to ``hf_hub_download`` for a repo id (``revision``, ``token``...).

    Returns:
        :class:`PruningInfo`

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: ``pruning_config.json`` / ``pruning_report.json`` is
            missing, truncated or malformed, or the model carries no pruning information.
    """
    if isinstance(dir_or_model, (str, os.PathLike)):
        directory = Path(dir_or_model)
        if directory.is_dir():
            config = _read(directory / CONFIG_FILE, "pruning config")
            report = _read(directory / REPORT_FILE, "pruning report")
            return PruningInfo(_as_config(config), _as_report(report), _checkpoint_facts(directory))
        if os.path.exists(directory) or str(dir_or_model).count("/") != 1:
            raise CheckpointError(f"'{dir_or_model}' is not a checkpoint directory; pass the directory save_sparse wrote.")
        repo_id = str(dir_or_model)
        config = _read(_download(repo_id, CONFIG_FILE, **hub_kwargs), "pruning config")
        report = _read(_download(repo_id, REPORT_FILE, **hub_kwargs), "pruning report")
        return PruningInfo(_as_config(config), _as_report(report), {})
    config = getattr(dir_or_model, "pruning_config", None)
    report = getattr(dir_or_model, "pruning_report", None)
    if config is None and report is None:
        source = getattr(getattr(dir_or_model, "config", None), "name_or_path", None)
        if source and Path(source).is_dir() and (Path(source) / REPORT_FILE).is_file():
            return load_pruning_info(source)
        raise CheckpointError(
            f"{type(dir_or_model).__name__} carries no pruning_config/pruning_report and was not loaded from a "
            "directory that has them; prune it with CalibratedPruner or pass the checkpoint directory."
        )
    if config is None and report is not None:
        report_config = report.get("config") if isinstance(report, dict) else getattr(report, "config", None)
        config = _as_config(report_config) if isinstance(report_config, dict) and report_config else None
    return PruningInfo(config, report, {})
