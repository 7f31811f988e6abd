"""Surviving interruptions: a resume checkpoint written after every pruned block, and out-of-memory errors
turned into advice.

A :class:`BlockCheckpoint` directory holds, after block ``k`` finished:

* ``block-0000k.safetensors``: the pruned weights of block ``k``'s Linears, in the model's dtype (exact bits);
* ``activations-0000{k+1}.safetensors`` (one file per process): the inputs of block ``k + 1``, one tensor per
  calibration batch, so a rerun continues without running blocks ``0..k`` again;
* ``resume_manifest.json``: the commit point, written last through a temporary sibling and a rename. It names
  the files above, holds the per-Linear records so far and the fingerprint of the configuration, the model and
  the calibration tokens that produced them.

Each file is written to a temporary sibling and renamed into place, and a file only counts once the manifest
names it, so a process killed at any instant (``SIGKILL`` included) leaves the last committed state readable.
A rerun with the same configuration, model and calibration data restores the finished blocks' weights and the
saved activations and continues; the block call arguments (masks, positions, rotary embeddings) are captured
again, which runs the embeddings only. The result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import read_json, write_json_atomic
from ..errors import AcceleratorMemoryError, CheckpointError
from ..models import DecoderLayout, find_fused_experts, find_prunable_linears, get_weight
from ..records import BlockRecord, LayerRecord
from .capture import CapturedInputs
from .distributed import barrier, is_main_process, process_index, world_size
from .offload import read_parameter, read_weight, write_parameter, write_weight

__all__ = [
    "BlockCheckpoint",
    "MANIFEST_NAME",
    "OUT_OF_MEMORY_ERRORS",
    "RESUMABLE_CONFIG_KEYS",
    "model_fingerprint",
    "out_of_memory_error",
    "remove_checkpoint",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "resume_manifest.json"
_FORMAT = "hf_calibprune-resume/1"
_BLOCK_FILE = "block-{:05d}.safetensors"
_ACTIVATIONS_FILE = "activations-{:05d}.rank{}.safetensors"
#: Prefix of the extra tensors a walk saves beside a block's weights (:meth:`BlockCheckpoint.saved_extra`).
_EXTRA = "extra."
#: Values of each Linear's weight that :func:`model_fingerprint` hashes (evenly spaced; all of a smaller weight).
_DIGEST_VALUES = 65536

#: Config keys a resumed run may change: they decide where and in what groups activations are processed, or
#: what is recorded, but not which weights are pruned. Changing ``batch_size`` (to recover from running out of
#: memory, say) regroups the saved activations; the result is then no longer bit-identical to an
#: uninterrupted run at either batch size, as statistics are summed in another order.
RESUMABLE_CONFIG_KEYS = (
    "batch_size",
    "activation_device",
    "execution_device",
    "measure_error",
    "hf_calibprune_version",
)

#: ``model.config`` keys that do not change the computation (paths, versions, output switches).
_VOLATILE_MODEL_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "_commit_hash",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "dtype",
        "torch_dtype",
        "_attn_implementation_autoset",
    }
)

# Test hook: seconds to sleep after each committed block, so a test can kill the process at a known point.
_DELAY_ENV = "HF_CALIBPRUNE_TEST_BLOCK_DELAY"

#: What torch raises when an accelerator runs out of memory (``torch.cuda.OutOfMemoryError`` is an alias).
OUT_OF_MEMORY_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None}
)


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------
def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    data = config.to_dict() if hasattr(config, "to_dict") else {}
    # A JSON round trip, so that a value read back from the manifest compares equal to a fresh one.
    return json.loads(json.dumps({k: v for k, v in data.items() if k not in _VOLATILE_MODEL_KEYS}, default=str))


def _weights_digest(weight: torch.Tensor) -> bytes:
    """The bytes of up to ``_DIGEST_VALUES`` evenly spaced values of ``weight``, with its shape and dtype."""
    flat = weight.detach().reshape(-1)
    step = max(1, flat.numel() // _DIGEST_VALUES)
    sample = flat[::step].to("cpu").contiguous()
    header = f"{tuple(weight.shape)}:{weight.dtype}:{step}".encode("utf-8")
    return header + sample.view(torch.uint8).numpy().tobytes()


def fused_parameters(block: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Fused expert weights of ``block`` by their name inside it (``"mlp.experts.gate_up_proj"``)."""
    return {f"{f.name}.{p}": (f.module, p) for f in find_fused_experts(block) for p in f.parameters}


def model_fingerprint(model: nn.Module, layout: DecoderLayout) -> dict[str, Any]:
    """Identify ``model`` before pruning: its config, its parameters' names/shapes/dtypes and every block's weights.

    Each block's prunable weights (Linears and fused expert tensors) are digested (up to 65,536 evenly spaced
    values of each, byte for byte),
    which tells apart two checkpoints of one architecture (a base model and its fine-tune, or two that share
    their first blocks) at the cost of hashing a small sample of every weight. An edit that changes none of the
    sampled values of a large weight (a single value between them) is not seen.

    Returns:
        `dict`: ``config`` (``model.config`` without paths and versions), ``config_sha256``, ``structure_sha256``,
        ``block_sha256`` (a digest per decoder block, by block name) and ``name_or_path`` (informational; a moved
        model still resumes).
    """
    config = _model_config(model)
    structure = [(name, list(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
    block_digests = {}
    for index, block in enumerate(layout.blocks):
        digest = hashlib.sha256()
        for name, module in find_prunable_linears(block).items():
            digest.update(name.encode("utf-8"))
            digest.update(_weights_digest(read_weight(module, root=block, name=name)))
        for name, (module, parameter) in fused_parameters(block).items():
            digest.update(name.encode("utf-8"))
            weight = read_parameter(module, parameter, root=block, name=name.rsplit(".", 1)[0])
            digest.update(_weights_digest(weight))
        block_digests[layout.block_name(index)] = digest.hexdigest()
    return {
        "config": config,
        "config_sha256": _json_sha256(config),
        "structure_sha256": _json_sha256(structure),
        "block_sha256": block_digests,
        "name_or_path": str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""),
    }


def _compact_values(config: dict[str, Any], limit: int = 256) -> dict[str, Any]:
    """Long values (a list of calibration texts) by their hash: the manifest is rewritten after every block."""
    compact = {}
    for key, value in config.items():
        text = json.dumps(value, sort_keys=True, default=str)
        compact[key] = {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()} if len(text) > limit else value
    return compact


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dict_differences(saved: dict[str, Any], current: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    keys = sorted((set(saved) | set(current)) - set(skip))
    return [
        f"{key} (checkpoint: {_short(saved.get(key))}, now: {_short(current.get(key))})"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def _differing_blocks(saved: Any, current: dict[str, str]) -> str:
    if not isinstance(saved, dict):
        return "the checkpoint holds no per-block digests: it was written by an older hf_calibprune"
    differing = [name for name in current if saved.get(name) != current[name]]
    return (
        f"blocks {', '.join(differing)} do not match: another checkpoint of the same architecture, or a model that "
        "was already pruned"
    )


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words."""
    found = []
    config = _dict_differences(saved.get("config") or {}, current.get("config") or {}, RESUMABLE_CONFIG_KEYS)
    if config:
        found.append("the pruning config differs: " + "; ".join(config))
    saved_model, model = saved.get("model") or {}, current.get("model") or {}
    if saved_model.get("config_sha256") != model.get("config_sha256"):
        keys = _dict_differences(saved_model.get("config") or {}, model.get("config") or {})
        found.append("the model's config.json differs: " + ("; ".join(keys[:8]) or "(contents)"))
    elif saved_model.get("structure_sha256") != model.get("structure_sha256"):
        found.append("the model's parameter names, shapes or dtypes differ (another model, or loaded in another dtype)")
    elif saved_model.get("block_sha256") != model.get("block_sha256"):
        differing = _differing_blocks(saved_model.get("block_sha256"), model.get("block_sha256") or {})
        found.append(f"the model's weights differ ({differing})")
    saved_calibration, calibration = saved.get("calibration") or {}, current.get("calibration") or {}
    if saved_calibration.get("token_sha256") != calibration.get("token_sha256"):
        details = _dict_differences(
            {k: saved_calibration.get(k) for k in ("num_samples", "seq_len", "seed")},
            {k: calibration.get(k) for k in ("num_samples", "seq_len", "seed")},
        )
        found.append(
            "the calibration tokens differ"
            + (f": {'; '.join(details)}" if details else " (same sizes and seed: the data or tokenizer changed)")
        )
    if saved.get("world_size", 1) != current.get("world_size", 1):
        found.append(
            f"the number of processes differs (checkpoint: {saved.get('world_size', 1)}, now: "
            f"{current.get('world_size', 1)}); each process saved its own share of the activations"
        )
    return found


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def _save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors`` to a temporary sibling, flushed, then renamed into place."""
    from safetensors.torch import save_file

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        save_file(tensors, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(
            f"{what} ({path.name}) is missing from the resume checkpoint {path.parent}; delete the directory to "
            "start over."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{what} at {path} is corrupted or truncated ({error}); delete {path.parent} to start over."
        ) from error


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def remove_checkpoint(directory: str | os.PathLike) -> None:
    """Delete a resume checkpoint's files, and ``directory`` itself when nothing else is left in it."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        name = path.name.lstrip(".")
        if name.startswith((MANIFEST_NAME, "block-", "activations-")) and path.is_file():
            path.unlink(missing_ok=True)
    if not any(directory.iterdir()):
        directory.rmdir()
    logger.info("Removed the resume checkpoint %s.", directory)


class BlockCheckpoint:
    """A resume checkpoint in ``directory``, for a run identified by ``fingerprint``.

    Opening it reads an existing manifest and refuses to resume, with a :class:`CheckpointError` saying what
    differs, when it was written for another configuration, model or calibration data. The engine calls
    :meth:`restore` once before its loop and :meth:`save_block` after each block.

    Args:
        directory (`str` or `os.PathLike`): where the checkpoint lives (created on the first save).
        fingerprint (`dict`): ``{"config": PruningConfig.to_dict(), "model": model_fingerprint(...),
            "calibration": samples.fingerprint or None}``; ``world_size`` is added here.
        num_blocks (`int`): decoder blocks of the model.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any], num_blocks: int) -> None:
        self.directory = Path(directory)
        config = _compact_values(fingerprint.get("config") or {})
        fingerprint = {**fingerprint, "config": config, "world_size": world_size()}
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.num_blocks = num_blocks
        #: Requested sparsity per block, saved with every block so that a rerun need not recompute OWL's ratios.
        self.layer_sparsity: dict[str, float] | None = None
        self.manifest: dict[str, Any] | None = self._read_manifest()

    # Reading ------------------------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.directory / MANIFEST_NAME
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"the resume directory '{self.directory}' is a file; pass a directory.")
        if not path.exists():
            return None
        manifest = read_json(path, "resume checkpoint manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise CheckpointError(
                f"{path} is not a hf_calibprune resume manifest ({_FORMAT}); pass another --resume-dir or delete it."
            )
        done = manifest.get("completed_blocks")
        valid_count = isinstance(done, int) and 0 < done <= self.num_blocks
        if manifest.get("num_blocks") != self.num_blocks or not valid_count:
            raise CheckpointError(
                f"the resume checkpoint in {self.directory} was written for a model with {manifest.get('num_blocks')} "
                f"decoder blocks (and records {done} finished), this model has {self.num_blocks}; delete the "
                "directory to start over, or pass the model it was made for."
            )
        differences = _differences(manifest.get("fingerprint") or {}, self.fingerprint)
        if differences:
            raise CheckpointError(
                f"cannot resume from {self.directory}: " + "; ".join(differences) + ". Rerun with the same model, "
                "configuration and calibration data, or pass a new --resume-dir (checkpoint_dir=) or delete this one "
                "to start over."
            )
        saved_config, config = manifest["fingerprint"].get("config") or {}, self.fingerprint.get("config") or {}
        changed = [key for key in RESUMABLE_CONFIG_KEYS if saved_config.get(key) != config.get(key)]
        if changed:
            before, after = {k: saved_config.get(k) for k in changed}, {k: config.get(k) for k in changed}
            logger.warning(
                "Resuming %s with changed %s: finished blocks are kept, but the result may not be bit-identical to an "
                "uninterrupted run.",
                self.directory,
                "; ".join(_dict_differences(before, after)),
            )
        return manifest

    def completed_blocks(self) -> int:
        """Blocks finished and saved by an earlier run (0 for a fresh checkpoint)."""
        return int(self.manifest["completed_blocks"]) if self.manifest else 0

    def saved_layer_sparsity(self) -> dict[str, float] | None:
        """The per-block sparsity the interrupted run used, or ``None`` for a fresh checkpoint."""
        saved = (self.manifest or {}).get("layer_sparsity")
        return {str(k): float(v) for k, v in saved.items()} if isinstance(saved, dict) else None

    def restore(
        self, layout: DecoderLayout, captured: CapturedInputs | None
    ) -> tuple[list[LayerRecord], list[BlockRecord]]:
        """Load the finished blocks' weights into the model and the saved activations into ``captured``.

        ``captured`` must be a fresh capture (its call arguments are reused; its hidden states are replaced).

        Returns:
            `tuple`: the layer and block records of the finished blocks.
        """
        done = self.completed_blocks()
        if not done:
            return [], []
        for index in range(done):
            block = layout.blocks[index]
            tensors = _load_tensors(self.directory / self.manifest["block_files"][index], f"block {index}'s weights")
            tensors = {name: tensor for name, tensor in tensors.items() if not name.startswith(_EXTRA)}
            linears = find_prunable_linears(block)
            fused = fused_parameters(block)
            unknown = sorted(set(tensors) - set(linears) - set(fused))
            if unknown:
                raise CheckpointError(
                    f"the resume checkpoint holds weights {unknown} that block {layout.block_name(index)} does not "
                    "have; it belongs to another model. Delete it to start over."
                )
            for name, weight in tensors.items():
                if name in fused:
                    module, parameter = fused[name]
                    if tuple(weight.shape) != tuple(getattr(module, parameter).shape):
                        raise CheckpointError(
                            f"{layout.block_name(index)}.{name} has shape {tuple(weight.shape)} in the resume "
                            "checkpoint, not the model's; it belongs to another model. Delete it to start over."
                        )
                    experts = name.rsplit(".", 1)[0]
                    write_parameter(module, parameter, weight, root=block, name=experts)
                    continue
                if tuple(weight.shape) != tuple(get_weight(linears[name]).shape):
                    raise CheckpointError(
                        f"{layout.block_name(index)}.{name} has shape {tuple(weight.shape)} in the resume checkpoint, "
                        "not the model's; it belongs to another model. Delete it to start over."
                    )
                write_weight(linears[name], weight, root=block, name=name)
        if captured is not None and done < self.num_blocks:
            self._restore_activations(captured, done)
        records = self.manifest.get("records") or {}
        try:
            layers = [LayerRecord(**record) for record in records.get("layers", [])]
            blocks = [BlockRecord(**record) for record in records.get("blocks", [])]
        except TypeError as error:
            raise CheckpointError(
                f"the resume manifest's records are malformed ({error}); delete it to start over."
            ) from error
        logger.info(
            "Resuming from %s: blocks 0-%d of %d restored, continuing at %s.",
            self.directory,
            done - 1,
            self.num_blocks,
            layout.block_name(done) if done < self.num_blocks else "the end",
        )
        return layers, blocks

    def saved_extra(self, index: int) -> dict[str, torch.Tensor]:
        """The extra tensors saved with finished block ``index`` (``save_block(..., extra=...)``)."""
        tensors = _load_tensors(self.directory / self.manifest["block_files"][index], f"block {index}'s weights")
        return {name[len(_EXTRA) :]: tensor for name, tensor in tensors.items() if name.startswith(_EXTRA)}

    def _restore_activations(self, captured: CapturedInputs, next_block: int) -> None:
        name = self.manifest.get("activation_files", {}).get(str(process_index()))
        if name is None:
            raise CheckpointError(
                f"the resume checkpoint in {self.directory} has no saved activations for block {next_block}; delete "
                "it to start over."
            )
        tensors = _load_tensors(self.directory / name, f"the inputs of block {next_block}")
        streams = {
            stream: [tensors[f"{stream}.{i}"] for i in range(len(tensors)) if f"{stream}.{i}" in tensors]
            for stream in ("hidden", "reference")
        }
        if sum(map(len, streams.values())) != len(tensors) or not streams["hidden"] or (
            streams["reference"] and len(streams["reference"]) != len(streams["hidden"])
        ):
            raise CheckpointError(
                f"the saved activations in {self.directory / name} are malformed; delete it to start over."
            )
        captured.hidden[:] = self._regrouped(streams["hidden"], captured.hidden)
        if streams["reference"]:  # the dense model's stream of block-wise reconstruction
            captured.reference = self._regrouped(streams["reference"], captured.hidden)

    def _regrouped(self, saved: list[torch.Tensor], fresh: list[torch.Tensor]) -> list[torch.Tensor]:
        """``saved`` activations as ``fresh``'s batches, devices and dtypes."""
        if [tuple(t.shape) for t in saved] != [tuple(t.shape) for t in fresh]:
            # Another batch_size: regroup the same samples (the order is the samples' order).
            joined = torch.cat(saved)
            sizes = [t.shape[0] for t in fresh]
            if joined.shape[0] != sum(sizes) or joined.shape[1:] != fresh[0].shape[1:]:
                raise CheckpointError(
                    f"the saved activations hold {tuple(joined.shape)} values, the calibration data gives "
                    f"{(sum(sizes), *fresh[0].shape[1:])}; delete {self.directory} to start over."
                )
            saved = list(joined.split(sizes))
        return [s.to(device=f.device, dtype=f.dtype) for s, f in zip(saved, fresh)]

    # Writing ------------------------------------------------------------------------------------------

    def save_block(
        self,
        index: int,
        block: nn.Module | None,
        captured: CapturedInputs | None,
        layers: list[LayerRecord],
        blocks: list[BlockRecord],
        extra: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Commit block ``index``: its pruned weights, the next block's inputs and the records so far, and ``extra``
        tensors that :meth:`saved_extra` gives back (what a walk needs besides the weights to go on). A walk whose
        steps change no weights (choosing blocks to remove) passes ``block=None`` and numbers its own steps.

        Every process writes its own activations; the main process then writes the weights and, last, the
        manifest.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        activation_files = {}
        if captured is not None and index + 1 < self.num_blocks:
            name = _ACTIVATIONS_FILE.format(index + 1, process_index())
            hidden = {f"hidden.{i}": _cpu_copy(h) for i, h in enumerate(captured.hidden)}
            hidden.update({f"reference.{i}": _cpu_copy(h) for i, h in enumerate(captured.reference or ())})
            _save_tensors_atomic(hidden, self.directory / name)
            activation_files = {str(rank): _ACTIVATIONS_FILE.format(index + 1, rank) for rank in range(world_size())}
        barrier()
        if is_main_process():
            block_file = _BLOCK_FILE.format(index)
            weights = {
                n: _cpu_copy(read_weight(m, root=block, name=n))
                for n, m in (find_prunable_linears(block).items() if block is not None else ())
            }
            for name, (module, parameter) in (fused_parameters(block).items() if block is not None else ()):
                weights[name] = _cpu_copy(read_parameter(module, parameter, root=block, name=name.rsplit(".", 1)[0]))
            weights.update({f"{_EXTRA}{name}": _cpu_copy(tensor) for name, tensor in (extra or {}).items()})
            _save_tensors_atomic(weights, self.directory / block_file)
            previous = self.manifest or {}
            manifest = {
                "format": _FORMAT,
                "num_blocks": self.num_blocks,
                "completed_blocks": index + 1,
                "block_files": [*previous.get("block_files", [])[:index], block_file],
                "activation_files": activation_files,
                "records": {"layers": [r.to_dict() for r in layers], "blocks": [b.to_dict() for b in blocks]},
                "layer_sparsity": self.layer_sparsity,
                "fingerprint": self.fingerprint,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json_atomic(self.directory / MANIFEST_NAME, manifest)
            self.manifest = manifest
            self._remove_stale(set(activation_files.values()))
        barrier()
        if not is_main_process():
            self.manifest = read_json(self.directory / MANIFEST_NAME, "resume checkpoint manifest")
        logger.debug("Saved the resume checkpoint after block %d to %s.", index, self.directory)
        delay = os.environ.get(_DELAY_ENV)
        if delay:
            time.sleep(float(delay))

    def _remove_stale(self, keep: set[str]) -> None:
        """Activation files of earlier blocks, and temporary files of interrupted writes."""
        for path in self.directory.iterdir():
            stale_activations = path.name.startswith("activations-") and path.name not in keep
            if stale_activations or (path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Out of memory
# --------------------------------------------------------------------------------------------------
def out_of_memory_error(
    error: BaseException,
    *,
    batch_size: int,
    num_samples: int,
    seq_len: int,
    schedule: str,
    activation_device: str | None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> AcceleratorMemoryError:
    """An :class:`AcceleratorMemoryError` for ``error`` that names the knobs that need less memory, best first."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    knobs = []
    if batch_size > 1:
        smaller = max(1, batch_size // 2)
        knobs.append(f"fewer samples per block call: batch_size={smaller} (--batch-size; now {batch_size})")
    if schedule == "one-pass":
        knobs.append("schedule='sequential' (--schedule sequential): one-pass keeps every micro-batch's state at once")
    if activation_device != "cpu":
        knobs.append("activations offloaded between blocks: activation_device='cpu' (--activation-device cpu)")
    knobs.append(
        "one block at a time on the accelerator: load the model on the CPU and pass execution_device='cuda' "
        "(--execution-device cuda), or load it with device_map='auto' and an offload folder (--device-map auto "
        "--offload-folder DIR)"
    )
    knobs.append(f"less calibration data: num_samples (now {num_samples}) or seq_len (now {seq_len})")
    resume = (
        f" Finished blocks are saved in {checkpoint_dir}: rerun with the same arguments (batch_size and "
        "activation_device may change) to continue from the first unfinished block."
        if checkpoint_dir
        else " Pass checkpoint_dir= (--resume-dir) so that a rerun continues after the blocks already finished."
    )
    return AcceleratorMemoryError(
        f"the accelerator ran out of memory while pruning ({first_line}). What helps: "
        + "; ".join(f"({i}) {k}" for i, k in enumerate(knobs, 1))
        + "."
        + resume
    )

