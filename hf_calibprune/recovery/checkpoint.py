"""Recover a pruned checkpoint directory into a new one: load, fine-tune keeping the zeros, merge, write, verify."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .._io import read_json
from ..errors import CheckpointError, SparsityMaskError
from ..integrations.transformers_plugin import checkpoint_keys
from .masks import extract_masks, full_masks, is_structurally_pruned, masked_parameter_names
from .train import RecoveryRecord, recover

__all__ = ["recover_checkpoint", "check_zeros_kept", "CARRIED_FILES"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "pruning_config.json"
REPORT_NAME = "pruning_report.json"
CARRIED_FILES = (CONFIG_NAME, REPORT_NAME)


def _checkpoint_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"'{directory}' holds no *.safetensors weights; recover needs a checkpoint saved with "
            "`save_pretrained` (safetensors) or `save_sparse(..., format=\"dense\")`."
        )
    return files


def _tensors(directory: Path) -> Iterator[tuple[str, Any, str]]:
    """(name, lazy handle, file) for every tensor of a safetensors checkpoint."""
    from safetensors import safe_open

    for file in _checkpoint_files(directory):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle, file.name


def check_zeros_kept(pruned_dir: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, int]:
    """Compare two dense safetensors checkpoints: for every tensor of ``pruned_dir``, count exact zeros that are
    non-zero in ``output_dir``.

    Returns:
        `dict[str, int]`: tensor name → zeros lost (only tensors that lost some). Tensors missing from the output
        count as entirely lost.
    """
    from safetensors import safe_open

    output = {}
    for file in _checkpoint_files(Path(output_dir)):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                output[name] = file
    lost: dict[str, int] = {}
    for name, handle, _ in _tensors(Path(pruned_dir)):
        before = handle.get_tensor(name)
        zeros = before == 0
        if not bool(zeros.any()):
            continue
        if name not in output:
            lost[name] = int(zeros.sum())
            continue
        with safe_open(str(output[name]), framework="pt") as other:
            after = other.get_tensor(name)
        count = int(torch.count_nonzero(after[zeros])) if after.shape == before.shape else int(zeros.sum())
        if count:
            lost[name] = count
    return lost


def _checkpoint_dtype(pruned_dir: Path) -> torch.dtype | None:
    config = read_json(pruned_dir / "config.json", "model config")
    name = config.get("dtype") or config.get("torch_dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) else None


def _save(
    model: torch.nn.Module,
    tokenizer: Any,
    output_dir: Path,
    overwrite: bool,
    config: dict[str, Any] | None,
    report: dict[str, Any] | None,
) -> None:
    from ..hub import save_sparse

    # save_sparse writes model.pruning_config / model.pruning_report beside the weights, in one atomic rename.
    model.pruning_config, model.pruning_report = config, report
    save_sparse(model, output_dir, format="dense", tokenizer=tokenizer, overwrite=overwrite)


def recover_checkpoint(
    pruned_dir: str | os.PathLike,
    data: Any,
    output_dir: str | os.PathLike,
    steps: int,
    *,
    overwrite: bool = False,
    **recover_kwargs: Any,
) -> RecoveryRecord:
    """Load a dense pruned checkpoint, run :func:`~hf_calibprune.recovery.recover`, and write the merged result.

    The output is a dense checkpoint (weights, config, tokenizer) in which every exact zero of the pruned
    weights of ``pruned_dir`` is still zero; ``pruning_config.json`` is copied over and ``pruning_report.json``
    gains a ``"recovery"`` list with this run's :class:`RecoveryRecord`. The written files are checked against
    ``pruned_dir`` before returning.

    Args:
        pruned_dir (`str`): directory of a pruned model saved with ``save_pretrained`` (safetensors).
        data: training texts (``.txt`` / ``.jsonl`` path, list of strings or dataset).
        output_dir (`str`): where to write the recovered checkpoint (via a temporary sibling and a rename).
        steps (`int`): optimizer steps.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty ``output_dir``.
        recover_kwargs: passed to :func:`~hf_calibprune.recovery.recover` (``lora``, ``shira``,
            ``learning_rate``, ``seq_len``, ``batch_size``, ...).

    Returns:
        `RecoveryRecord`: what the run measured.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hub.atomic import check_target

    source, target = Path(pruned_dir), Path(output_dir)
    if not (source / "config.json").is_file():
        raise CheckpointError(f"'{source}' is not a model checkpoint (no config.json); pass the pruned model's directory.")
    if source.resolve() == target.resolve():
        raise CheckpointError("--output must differ from the pruned checkpoint directory; pass a new directory.")
    check_target(target, overwrite)  # fail before training, not after
    _checkpoint_files(source)
    report = read_json(source / REPORT_NAME, "pruning report") if (source / REPORT_NAME).is_file() else None
    config = read_json(source / CONFIG_NAME, "pruning config") if (source / CONFIG_NAME).is_file() else None
    dtype = _checkpoint_dtype(source)

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    masks = full_masks(model) if is_structurally_pruned(report) else extract_masks(model, report=report)
    if not masks:
        logger.warning("'%s' has no pruned weights (no exact zeros in its decoder Linears).", source)
    model = recover(model, tokenizer, data, steps, masks=masks, **recover_kwargs)
    record: RecoveryRecord = model.recovery_record
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)  # zeros stay exactly zero in any float dtype
    if report is not None:
        report = dict(report)
        report["recovery"] = list(report.get("recovery") or []) + [record.to_dict()]
    _save(model, tokenizer, target, overwrite, config, report)

    lost = check_zeros_kept(source, target)
    masked = checkpoint_keys(model, masked_parameter_names(model, masks))  # Mixtral saves experts per expert
    masked_lost = {name: count for name, count in lost.items() if name in masked}
    if masked_lost:
        raise SparsityMaskError(
            f"The written checkpoint lost zeros of pruned weights: {json.dumps(masked_lost)[:300]}. This is a bug; "
            "please report it."
        )
    if lost:
        logger.warning(
            "Weights that were never pruned but held exact zeros were trained freely and lost %d of them (%s); "
            "pass lora=True (--lora) to leave them untouched.",
            sum(lost.values()),
            ", ".join(list(lost)[:5]),
        )
    logger.info("Wrote the recovered checkpoint to %s", target)
    return record
