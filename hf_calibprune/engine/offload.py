"""Read and write a Linear's weight wherever accelerate keeps it: in memory, offloaded to CPU RAM, or on disk.

Under accelerate's :class:`~accelerate.hooks.AlignDevicesHook` with ``offload=True`` a parameter is on the
``meta`` device between forward passes and its value lives in the hook's ``weights_map``: a (prefixed) view
of a state dict in CPU RAM, or of an :class:`~accelerate.utils.OffloadedWeightsLoader` index that points at
``.dat`` memmaps or safetensors files on disk. Every forward re-reads the weight from that map, so a pruned
weight written only to the onloaded parameter is silently lost (and a disk-offloaded one comes back dense).

:func:`write_weight` therefore writes the onloaded parameter (when it is materialized) *and* the offload map:

* CPU-offloaded: the tensor in the map's state dict is overwritten in place.
* disk-offloaded: the pruned tensor goes to a **new** safetensors file in a private folder (inside the
  model's offload folder when it has one), and the index entry is re-pointed at it. The files the index
  pointed at before, often the user's own checkpoint (transformers offloads straight from it), are never
  written. The folder is removed when the offload map is garbage collected or the process exits.

Weights are returned and taken as ``[out_features, in_features]``, as :func:`hf_calibprune.models.get_weight`
does (GPT-2's ``Conv1D`` stores the transpose).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ModelStructureError

__all__ = [
    "WeightLocation",
    "materialized",
    "locate_weight",
    "read_weight",
    "write_weight",
    "read_parameter",
    "write_parameter",
    "is_offloaded",
]

logger = logging.getLogger(__name__)

Storage = Literal["memory", "cpu", "disk"]

# id(OffloadedWeightsLoader) -> (weak reference to it, folder holding our rewritten tensors)
_PRUNED_FOLDERS: dict[int, tuple[weakref.ref, Path]] = {}


@dataclass(frozen=True)
class WeightLocation:
    """Where a Linear's weight lives.

    Args:
        storage (`str`): ``"memory"`` (a plain parameter, possibly placed by a hook), ``"cpu"`` (accelerate's
            CPU-offload state dict) or ``"disk"`` (an offload index entry: a ``.dat`` memmap or a safetensors file).
        mapping (`Mapping`, *optional*): the innermost offload map holding the value (``None`` for ``"memory"``).
        key (`str`): the weight's key in ``mapping``.
    """

    storage: Storage
    mapping: Any = None
    key: str = ""


def _hooks(module: nn.Module):
    """The accelerate hooks attached to ``module`` (a ``SequentialHook`` unpacked)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def _offload_map(
    module: nn.Module, root: nn.Module | None, name: str, parameter: str = "weight"
) -> tuple[Any, str] | None:
    """The offload ``weights_map`` and key of ``module.<parameter>``, searching ``module`` then its ancestors up to
    ``root``.

    Hooks placed with ``place_submodules=True`` (``preload_module_classes``) sit on an ancestor and key the
    weight by its path below that ancestor.
    """
    candidates: list[tuple[nn.Module, str]] = [(module, parameter)]
    if root is not None and name:
        parts = name.split(".")
        for depth in range(len(parts) - 1, -1, -1):
            ancestor = root.get_submodule(".".join(parts[:depth])) if depth else root
            candidates.append((ancestor, ".".join(parts[depth:] + [parameter])))
    for owner, key in candidates:
        for hook in _hooks(owner):
            weights_map = getattr(hook, "weights_map", None)
            if getattr(hook, "offload", False) and weights_map is not None and _has_key(weights_map, key):
                return weights_map, key
    return None


def _has_key(weights_map: Any, key: str) -> bool:
    # ``key in PrefixedDataset`` goes through ``__getitem__``, which reads the tensor from disk: ask the innermost map.
    inner, full_key = _innermost(weights_map, key)
    if _is_loader(inner):
        return full_key in inner.state_dict or full_key in inner.index
    return full_key in inner


def _is_loader(mapping: Any) -> bool:
    """An accelerate ``OffloadedWeightsLoader`` (a state dict in RAM plus an index of files on disk)."""
    return hasattr(mapping, "state_dict") and hasattr(mapping, "index")


def _innermost(weights_map: Any, key: str) -> tuple[Any, str]:
    """Unwrap accelerate's ``PrefixedDataset`` layers: the underlying mapping and the full key in it."""
    while hasattr(weights_map, "dataset") and hasattr(weights_map, "prefix"):
        key = f"{weights_map.prefix}{key}"
        weights_map = weights_map.dataset
    return weights_map, key


def locate_weight(
    module: nn.Module, *, root: nn.Module | None = None, name: str = "", parameter: str = "weight"
) -> WeightLocation:
    """Find where ``module.<parameter>`` is kept.

    Args:
        module (`nn.Module`): a Linear or ``Conv1D`` (or any module, with ``parameter``).
        root (`nn.Module`, *optional*): an ancestor (the decoder block) whose hooks may own the weight.
        name (`str`, *optional*): ``module``'s path below ``root`` (``"self_attn.q_proj"``).
        parameter (`str`, *optional*, defaults to `"weight"`): the parameter's attribute name on ``module``.
    """
    found = _offload_map(module, root, name, parameter)
    if found is None:
        return WeightLocation("memory")
    inner, full_key = _innermost(*found)
    if _is_loader(inner):
        storage: Storage = "cpu" if full_key in inner.state_dict else "disk"
        return WeightLocation(storage, inner, full_key)
    return WeightLocation("cpu", inner, full_key)


def is_offloaded(module: nn.Module, *, root: nn.Module | None = None, name: str = "") -> bool:
    """``True`` when the weight's value is kept in an accelerate offload map rather than the parameter."""
    return locate_weight(module, root=root, name=name).storage != "memory"


def _transposed(module: nn.Module) -> bool:
    # Everything prunable that is not an nn.Linear is GPT-2's Conv1D, which stores [in, out].
    return not isinstance(module, nn.Linear)


def read_parameter(
    module: nn.Module, parameter: str, *, root: nn.Module | None = None, name: str = ""
) -> torch.Tensor:
    """The value of ``module.<parameter>`` as stored, from wherever it lives.

    A materialized parameter is returned detached (a view: do not modify it in place); an offloaded one is read
    from the offload map (CPU RAM or disk) into a CPU tensor.

    Raises:
        :class:`~hf_calibprune.errors.ModelStructureError`: the parameter is on ``meta`` and no accelerate hook
            holds its value.
    """
    value = getattr(module, parameter)
    if value.device.type != "meta":
        return value.detach()
    location = locate_weight(module, root=root, name=name, parameter=parameter)
    if location.storage == "memory":
        raise ModelStructureError(
            f"the {parameter} of {name or type(module).__name__} is on the meta device and no accelerate offload "
            "hook holds its value; load the model with from_pretrained(device_map=..., offload_folder=...) or "
            "accelerate.dispatch_model instead of moving it to meta yourself."
        )
    return location.mapping[location.key]


def write_parameter(
    module: nn.Module, parameter: str, value: torch.Tensor, *, root: nn.Module | None = None, name: str = ""
) -> torch.Tensor:
    """Write ``value`` (in the parameter's stored layout) into ``module.<parameter>`` so it survives accelerate's hooks.

    The materialized parameter (if any) and the offload map (if any) both receive the value, in the stored
    dtype. Returns the value as stored.
    """
    target = getattr(module, parameter)
    location = locate_weight(module, root=root, name=name, parameter=parameter)
    stored = None
    if target.device.type != "meta":
        with torch.no_grad():
            target.copy_(value.to(device=target.device, dtype=target.dtype))
        stored = target.detach()
    if location.storage == "memory":
        if stored is None:
            raise ModelStructureError(
                f"cannot write the {parameter} of {name or type(module).__name__}: it is on the meta device and no "
                "accelerate offload hook holds its value."
            )
        return stored
    # The parameter keeps shape and dtype on meta, so the disk copy need not be read back for them.
    value = value.detach().to(device="cpu", dtype=target.dtype)
    if tuple(value.shape) != tuple(target.shape):
        raise ModelStructureError(
            f"pruned {parameter} of {name or location.key} has shape {tuple(value.shape)}, the module's "
            f"{tuple(target.shape)}."
        )
    _store(location, value)
    return stored if stored is not None else value


def read_weight(module: nn.Module, *, root: nn.Module | None = None, name: str = "") -> torch.Tensor:
    """The weight of ``module`` as ``[out_features, in_features]``, from wherever it lives (see
    :func:`read_parameter`)."""
    value = read_parameter(module, "weight", root=root, name=name)
    return value.t() if _transposed(module) else value


def write_weight(
    module: nn.Module, weight: torch.Tensor, *, root: nn.Module | None = None, name: str = ""
) -> torch.Tensor:
    """Write ``weight`` (``[out_features, in_features]``) into ``module`` so that it survives accelerate's hooks.

    Returns the value as stored (``[out_features, in_features]``, the module's dtype).
    """
    stored = write_parameter(module, "weight", weight.t() if _transposed(module) else weight, root=root, name=name)
    return stored.t() if _transposed(module) else stored


def _store(location: WeightLocation, value: torch.Tensor) -> None:
    """Put ``value`` into the offload map at ``location``: on disk a new file; in CPU RAM in place where the stored
    tensor has its shape and dtype (every alias of it, accelerate keeps one copy, sees the new value), else as a new
    entry (a new shape, or a parameter the map did not hold)."""
    if location.storage == "disk":
        _write_disk(location, value)
        return
    state_dict = location.mapping.state_dict if _is_loader(location.mapping) else location.mapping
    current = state_dict[location.key] if location.key in state_dict else None
    if (current is not None and current.device.type == "cpu" and current.dtype == value.dtype
            and current.shape == value.shape and not current.is_inference()):
        with torch.no_grad():
            current.copy_(value)
    elif isinstance(state_dict, MutableMapping):
        state_dict[location.key] = value.contiguous()
    else:
        raise ModelStructureError(
            f"cannot write {location.key}: accelerate's offload map is a read-only {type(state_dict).__name__}."
        )


def _write_disk(location: WeightLocation, value: torch.Tensor) -> None:
    """A new safetensors file in our own folder, and the index entry re-pointed at it (never the old file)."""
    from safetensors.torch import save_file

    loader = location.mapping
    folder = _pruned_folder(loader)
    target = folder / f"{location.key}.safetensors"
    partial = folder / f".{location.key}.safetensors.partial"
    save_file({location.key: value.contiguous()}, str(partial))
    os.replace(partial, target)
    # A new dict: tied weights may share one index entry, and only this weight was pruned.
    loader.index[location.key] = {
        "safetensors_file": str(target),
        "weight_name": location.key,
        "dtype": str(value.dtype).removeprefix("torch."),
    }
    if location.key not in loader.all_keys:
        loader.all_keys.append(location.key)


def _pruned_folder(loader: Any) -> Path:
    entry = _PRUNED_FOLDERS.get(id(loader))
    if entry is not None and entry[0]() is loader:
        return entry[1]
    parent = getattr(loader, "save_folder", None)
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="hf_calibprune-pruned-", dir=parent))
    _PRUNED_FOLDERS[id(loader)] = (weakref.ref(loader), folder)
    weakref.finalize(loader, _remove_folder, id(loader), folder)
    logger.info("Writing pruned disk-offloaded weights to %s (removed when the model is freed).", folder)
    return folder


def _remove_folder(key: int, folder: Path) -> None:
    _PRUNED_FOLDERS.pop(key, None)
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def materialized(block: nn.Module) -> Iterator[None]:
    """Inside, every offloaded parameter of ``block`` is a real CPU tensor read from its offload map, so code that
    knows nothing of accelerate (model surgery) may change values and shapes, drop parameters and add new ones.

    On the way out each parameter goes back into the offload map, in its new shape, and the module gets a ``meta``
    parameter of that shape again, as accelerate's hooks expect; a parameter added inside (a new bias) is stored
    beside its module's offloaded ones. One block at a time is held in memory. A block with nothing offloaded is
    left alone.
    """
    offloaded: dict[str, WeightLocation] = {}
    loaded: dict[str, tuple[nn.Parameter, int]] = {}  # what was read in, and its in-place version counter then
    present = {name for name, _ in block.named_parameters()}
    for name, parameter in list(block.named_parameters()):
        if parameter.device.type != "meta":
            continue
        owner, leaf = _owner(block, name)
        location = locate_weight(owner, root=block, name=name.rpartition(".")[0], parameter=leaf)
        if location.storage == "memory":
            raise ModelStructureError(
                f"{name} is on the meta device and no accelerate offload hook holds its value; load the model with "
                "from_pretrained(device_map=..., offload_folder=...) or accelerate.dispatch_model."
            )
        offloaded[name] = location
        _set_parameter(owner, leaf, location.mapping[location.key].clone(), parameter.requires_grad)
        value = getattr(owner, leaf)
        loaded[name] = (value, value._version)
    if not offloaded:
        yield
        return
    try:
        yield
    finally:
        for name, parameter in list(block.named_parameters()):
            location = offloaded.get(name) or (_beside(offloaded, name) if name not in present else None)
            if location is None:  # kept in memory by the model itself
                continue
            before = loaded.get(name)
            if before is None or before[0] is not parameter or before[1] != parameter._version:  # new or changed
                _store(location, parameter.detach().to("cpu").contiguous())
            owner, leaf = _owner(block, name)
            _set_parameter(owner, leaf, torch.empty(parameter.shape, dtype=parameter.dtype, device="meta"),
                           parameter.requires_grad)


def _owner(block: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (block.get_submodule(path) if path else block), leaf


def _set_parameter(module: nn.Module, leaf: str, value: torch.Tensor, requires_grad: bool) -> None:
    setattr(module, leaf, nn.Parameter(value, requires_grad=requires_grad))


def _beside(offloaded: dict[str, WeightLocation], name: str) -> WeightLocation | None:
    """Where a parameter added inside :func:`materialized` goes: the map of its module's offloaded parameters."""
    path, _, leaf = name.rpartition(".")
    for other, location in offloaded.items():
        other_path, _, other_leaf = other.rpartition(".")
        if other_path == path and location.key.endswith(other_leaf):
            return WeightLocation(location.storage, location.mapping, location.key[: -len(other_leaf)] + leaf)
    return None
