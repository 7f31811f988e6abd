"""Record evaluation results in a saved checkpoint: its ``pruning_report.json`` and its model card."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .._io import read_json, write_json_atomic

__all__ = ["record_evaluation"]

logger = logging.getLogger(__name__)

REPORT_NAME = "pruning_report.json"  # the name hf_calibprune.report writes


def _write_text_atomic(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _update_card(readme: Path, report: dict[str, Any]) -> None:
    # Only the model-index changes; the user's text, the hf_calibprune section and other metadata stay.
    from huggingface_hub import ModelCard, ModelCardData

    from ..hub.card import card_metadata

    card = ModelCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True)
    current = card.data.to_dict()
    base_model = current.get("base_model") if isinstance(current.get("base_model"), str) else None
    fresh = card_metadata(report, base_model=base_model, license=current.get("license")).to_dict()
    if "model-index" not in fresh:
        return
    current["model-index"] = fresh["model-index"]
    current.pop("model_name", None)
    card.data = ModelCardData(ignore_metadata_errors=True, **current)
    _write_text_atomic(readme, card.content)


def record_evaluation(directory: str | os.PathLike, results: dict[str, Any]) -> list[Path]:
    """Merge ``results`` into ``directory/pruning_report.json``'s ``evaluation`` (and the README's model-index).

    Local paths in ``results`` (the data files evaluated on) are recorded by file name, with size and sha256 in
    ``local_files``, as :func:`~hf_calibprune.save_sparse` records calibration files.

    Nothing is written when the directory has no report. Both files are written to a temporary sibling
    and renamed into place. Returns the paths written.
    """
    directory = Path(directory)
    report_path = directory / REPORT_NAME
    if not report_path.is_file():
        return []
    from ..hub.publication import merge_local_files, publishable

    report = read_json(report_path, "pruning report")
    # The report is published: the evaluation's data files are named by file name, size and hash, not by path.
    results, files = publishable(json.loads(json.dumps(results, default=str)))
    evaluation = dict(report.get("evaluation") or {})
    evaluation.update(results)
    report["evaluation"] = evaluation
    if files:
        report["local_files"] = merge_local_files(report.get("local_files"), files)
    write_json_atomic(report_path, report)
    written = [report_path]
    readme = directory / "README.md"
    if readme.is_file():
        _update_card(readme, report)
        written.append(readme)
    logger.info("Recorded the evaluation in %s.", ", ".join(str(p) for p in written))
    return written
