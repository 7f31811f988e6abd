"""Checkpoint formats: thin classes behind a registry, the math lives in :mod:`hf_calibprune.hub.compact`.

* ``dense`` (default): ``model.save_pretrained`` safetensors with exact zeros; loads everywhere.
* ``compact``: the dense files rewritten so each pruned weight is stored as a bitmask (or 2-bit N:M
  indices) plus its kept values; ``config.json`` names the ``hf_calibprune`` quantizer that decompresses it.

A format's ``write(model, directory, ...)`` returns the measured facts of what it wrote (``format``,
``weights_bytes``, ``dense_weights_bytes``, ``size_ratio``...), which the model card shows.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..registry import Registry
from ..version import __version__

__all__ = [
    "FORMATS",
    "QUANT_METHOD",
    "COMPACT_VERSION",
    "DenseFormat",
    "CompactFormat",
    "weight_files",
    "weights_bytes",
    "compact_directory",
    "install_hint",
]

logger = logging.getLogger(__name__)

QUANT_METHOD = "hf_calibprune"
COMPACT_VERSION = 1
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def install_hint(weights_file: str) -> str:
    """The ``transformers_weights`` value written into a compact ``config.json``.

    transformers reads ``config.transformers_weights`` as the weights file name before it loads anything; a
    value that is not a ``*.safetensors`` name makes plain transformers stop with an error that quotes it, so
    a compact checkpoint loaded without hf_calibprune fails with this instruction instead of silently loading
    random weights. The registered quantizer swaps in the real file name (``weights_file``).
    """
    return (
        f"{weights_file} -- this is an hf_calibprune compact sparse checkpoint: run `pip install hf_calibprune` "
        "and `import hf_calibprune` before from_pretrained to load it"
    )


def weight_files(directory: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """The safetensors weight files of a saved model directory, and its index file (``None`` if unsharded)."""
    directory = Path(directory)
    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is corrupted or truncated ({error}); save the checkpoint again.") from error
        return [directory / name for name in sorted(set(weight_map.values()))], index
    single = directory / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single], None
    raise CheckpointError(f"No {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in {directory}.")


def weights_bytes(directory: str | os.PathLike) -> int:
    """Total size in bytes of a directory's safetensors weight files."""
    files, _ = weight_files(directory)
    return sum(f.stat().st_size for f in files)


def _pruned_keys(report: dict[str, Any] | None) -> set[str] | None:
    """Module names the report says were pruned, or ``None`` when there is no report to go by."""
    if not report or not report.get("layers"):
        return None
    return {layer["name"] for layer in report["layers"] if isinstance(layer, dict) and layer.get("name")}


def _is_candidate(key: str, pruned: set[str] | None) -> bool:
    if not key.endswith(".weight"):
        return False
    if pruned is None:
        return True
    module = key[: -len(".weight")]
    # Saved names can differ from module names by a leading prefix (e.g. a base-model prefix); compare suffixes.
    parts = module.split(".")
    return any(".".join(parts[i:]) in pruned for i in range(len(parts))) or any(
        name.endswith("." + module) for name in pruned
    )


def _n_m(pattern: Any) -> tuple[int, int] | None:
    if isinstance(pattern, str) and ":" in pattern:
        n, _, m = pattern.partition(":")
        if n.strip().isdigit() and m.strip().isdigit():
            return int(n), int(m)
    return None


def _fused_expert_keys(model: Any, pruned: set[str] | None) -> set[str]:
    """Saved keys of the model's fused expert parameters that were pruned (every one without a report)."""
    from ..errors import ModelStructureError
    from ..integrations.transformers_plugin import checkpoint_keys
    from ..models import find_decoder_layout, find_fused_experts, fused_parameter_of

    try:
        layout = find_decoder_layout(model)
    except ModelStructureError:
        return set()
    parameters = [
        f"{layout.block_name(index)}.{fused.name}.{parameter}"
        for index, block in enumerate(layout.blocks)
        for fused in find_fused_experts(block)
        for parameter in fused.parameters
    ]
    if pruned is not None:
        listed = {fused_parameter_of(name) for name in pruned}
        parameters = [name for name in parameters if name in listed]
    return checkpoint_keys(model, parameters)


def compact_directory(
    directory: str | os.PathLike, report: dict[str, Any] | None = None, expert_keys: set[str] = frozenset()
) -> dict[str, Any]:
    """Rewrite the safetensors files of a dense checkpoint in ``directory`` into the compact layout, in place.

    Candidates are the ``*.weight`` tensors of the Linears the report lists (all ``*.weight`` tensors without a
    report) and the ``expert_keys`` (saved keys of pruned fused expert parameters, 3-D or split per expert); each
    is stored compactly only when that is smaller (see :func:`~hf_calibprune.hub.compact.encode_weight`).

    Returns:
        `dict`: ``weights_bytes``, ``dense_weights_bytes``, ``size_ratio`` (whole checkpoint),
        ``compacted_tensors``, ``compacted_bytes`` / ``compacted_dense_bytes`` and ``compacted_ratio`` (the
        pruned tensors alone).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .compact import encode_weight, encoded_nbytes

    directory = Path(directory)
    files, index = weight_files(directory)
    dense_total = sum(f.stat().st_size for f in files)
    pruned = _pruned_keys(report)
    n_m = _n_m((report or {}).get("pattern"))
    new_map: dict[str, str] = {}
    compacted, compacted_bytes, compacted_dense_bytes, total_tensor_bytes = 0, 0, 0, 0
    for path in files:
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                candidate = (_is_candidate(key, pruned) and tensor.dim() == 2) or key in expert_keys
                encoded = encode_weight(tensor, n_m) if candidate else None
                if encoded is None:
                    tensors[key] = tensor
                    total_tensor_bytes += tensor.numel() * tensor.element_size()
                    continue
                compacted += 1
                compacted_dense_bytes += tensor.numel() * tensor.element_size()
                compacted_bytes += encoded_nbytes(encoded)
                total_tensor_bytes += encoded_nbytes(encoded)
                for suffix, part in encoded.items():
                    tensors[key + suffix] = part.contiguous()
        metadata = {**metadata, "format": "pt", "hf_calibprune": f"compact-v{COMPACT_VERSION}"}
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)
        new_map.update({key: path.name for key in tensors})
        del tensors
    if index is not None:
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = dict(sorted(new_map.items()))
        data.setdefault("metadata", {})["total_size"] = total_tensor_bytes
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    total = sum(f.stat().st_size for f in files)
    return {
        "weights_bytes": total,
        "dense_weights_bytes": dense_total,
        "size_ratio": round(total / dense_total, 4) if dense_total else None,
        "compacted_tensors": compacted,
        "compacted_bytes": compacted_bytes,
        "compacted_dense_bytes": compacted_dense_bytes,
        "compacted_ratio": round(compacted_bytes / compacted_dense_bytes, 4) if compacted_dense_bytes else None,
    }


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_not_quantized(model: Any) -> None:
    quantization_config = getattr(getattr(model, "config", None), "quantization_config", None)
    if quantization_config is None:
        return
    method = (
        quantization_config.get("quant_method")
        if isinstance(quantization_config, dict)
        else getattr(quantization_config, "quant_method", None)
    )
    method = getattr(method, "value", method)
    if method != QUANT_METHOD:
        raise CheckpointError(
            f"The model is quantized ({method}); a sparse checkpoint stores plain weights. Dequantize it first "
            "(`model = model.dequantize()`, or load a GGUF with `GgufConfig(dequantize=True)`)."
        )


class DenseFormat:
    """``model.save_pretrained`` safetensors with exact zeros, and no ``quantization_config``."""

    name = "dense"

    def write(self, model: Any, directory: Path, *, max_shard_size: int | str, report: dict | None = None, **kwargs: Any) -> dict[str, Any]:
        _check_not_quantized(model)
        model.save_pretrained(directory, max_shard_size=max_shard_size, **kwargs)
        _edit_config(directory, self._strip)
        size = weights_bytes(directory)
        return {"format": self.name, "weights_bytes": size, "dense_weights_bytes": size, "size_ratio": 1.0}

    @staticmethod
    def _strip(config: dict[str, Any]) -> None:
        # A plain checkpoint: no trace of the plugin that may have loaded or pruned the model.
        quantization_config = config.get("quantization_config")
        if isinstance(quantization_config, dict) and quantization_config.get("quant_method") == QUANT_METHOD:
            del config["quantization_config"]
        config.pop("transformers_weights", None)


class CompactFormat:
    """Pruned weights as bitmask / N:M indices plus kept values; reloads through the ``hf_calibprune`` quantizer."""

    name = "compact"

    def write(self, model: Any, directory: Path, *, max_shard_size: int | str, report: dict | None = None, **kwargs: Any) -> dict[str, Any]:
        DenseFormat().write(model, directory, max_shard_size=max_shard_size, report=report, **kwargs)
        stats = compact_directory(directory, report, _fused_expert_keys(model, _pruned_keys(report)))
        _, index = weight_files(directory)
        weights_file = index.name if index is not None else SAFE_WEIGHTS_NAME

        def add_quantization_config(config: dict[str, Any]) -> None:
            config["quantization_config"] = {
                "quant_method": QUANT_METHOD,
                "format": self.name,
                "compact_version": COMPACT_VERSION,
                "weights_file": weights_file,
                "size_ratio": stats["size_ratio"],
                "hf_calibprune_version": __version__,
            }
            config["transformers_weights"] = install_hint(weights_file)

        _edit_config(directory, add_quantization_config)
        logger.info(
            "Compact checkpoint: %d pruned tensors at %.3fx their dense size; weights %.3fx the dense checkpoint.",
            stats["compacted_tensors"],
            stats["compacted_ratio"] or 1.0,
            stats["size_ratio"] or 1.0,
        )
        return {"format": self.name, **stats}


FORMATS: Registry[type] = Registry(
    "checkpoint format",
    {"dense": "hf_calibprune.hub.formats:DenseFormat", "compact": "hf_calibprune.hub.formats:CompactFormat"},
    error=CheckpointError,
)

