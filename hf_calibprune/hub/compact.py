"""Compact storage of pruned weights: pure pack / unpack functions (torch; numpy's bit packing on CPU).

Two layouts, both bit-exact (a weight comes back with the same bits, ``-0.0`` included):

* **bitmask** (unstructured, and N:M with ``M > 4``): one bit per element, set where the element's bits are
  not all zero, packed 8 per byte in row-major order (most significant bit first, as ``numpy.packbits``),
  plus the kept values in row-major order. A pruned bf16 tensor at 50 % costs
  ``1/8 + 2 * 0.5 = 1.125`` bytes per element instead of 2 (0.5625x).
* **nm** (N:M with ``M <= 4``, e.g. 2:4): along each row, every group of ``M`` consecutive inputs keeps
  exactly ``N`` values, stored densely as ``[rows, cols // M * N]``, plus their positions inside the group as
  2-bit indices packed 4 per byte. For 2:4 that is ``cols / 2`` values and ``cols`` index bits per row: the same
  1.125 bytes per bf16 element as the bitmask, in the layout sparse kernels (cuSPARSELt) read. For
  ``M > 4`` indices would need ``ceil(log2 M) >= 3`` bits per kept value, i.e. ``>= 1.5`` bits per element for
  4:8, so the 1-bit bitmask is used instead.

Each layout is a ``dict[str, torch.Tensor]`` of *companions* stored beside the parameter's key, e.g.
``model.layers.0.mlp.up_proj.weight_sparse_values``; :func:`encode_weight` picks one (N:M when the weight
follows its pattern, else the bitmask, else ``None``: dense, when compaction would not pay), :func:`decode_weight` reverses it and checks every size, raising
:class:`~hf_calibprune.errors.CheckpointError` on a missing or mismatched companion.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = [
    "SUFFIXES",
    "BITMASK",
    "VALUES",
    "NM_INDICES",
    "SHAPE",
    "NM",
    "nonzero_mask",
    "pack_bits",
    "unpack_bits",
    "pack_bitmask",
    "unpack_bitmask",
    "is_n_m",
    "pack_n_m",
    "unpack_n_m",
    "encode_weight",
    "decode_weight",
    "encoded_nbytes",
    "companion_key",
    "split_companion_key",
]

# Companion suffixes, appended to the parameter name (``weight`` -> ``weight_sparse_values``).
VALUES = "_sparse_values"
BITMASK = "_sparse_bitmask"
NM_INDICES = "_sparse_nm_indices"
SHAPE = "_sparse_shape"
NM = "_sparse_nm"
SUFFIXES = (VALUES, BITMASK, NM_INDICES, SHAPE, NM)

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NM_MAX_M = 4  # 2-bit indices


def companion_key(key: str, suffix: str) -> str:
    """``"a.weight"`` + ``"_sparse_values"`` -> ``"a.weight_sparse_values"``."""
    return key + suffix


def split_companion_key(key: str) -> tuple[str, str] | None:
    """Return ``(parameter_key, suffix)`` for a companion key, ``None`` for any other key."""
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def nonzero_mask(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the elements whose bits are not all zero (so ``-0.0`` counts as kept).

    Comparing bits rather than values is what makes the round trip bit-exact for every float format.
    """
    return _int_view(weight).view(weight.shape) != 0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a flat boolean tensor into ``uint8``, 8 per byte, most significant bit first (``np.packbits``)."""
    if bits.device.type == "cpu":
        return torch.from_numpy(np.packbits(bits.reshape(-1).numpy()))
    return _pack_bits_torch(bits)


def _pack_bits_torch(bits: torch.Tensor) -> torch.Tensor:
    """:func:`pack_bits` with torch ops only, for tensors on an accelerator."""
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    octets = flat.view(-1, 8)
    packed = octets[:, 0] << 7
    for j in range(1, 8):
        packed |= octets[:, j] << (7 - j)
    return packed


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` bits as a flat boolean tensor."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise CheckpointError(f"A packed bitmask must be a 1-D uint8 tensor, got {packed.dtype} {list(packed.shape)}.")
    if packed.numel() != math.ceil(count / 8):
        raise CheckpointError(
            f"A bitmask for {count} elements needs {math.ceil(count / 8)} bytes, the checkpoint has {packed.numel()}."
        )
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).view(np.bool_))
    return _unpack_bits_torch(packed, count)


def _unpack_bits_torch(packed: torch.Tensor, count: int) -> torch.Tensor:
    """:func:`unpack_bits` with torch ops only, for tensors on an accelerator."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.reshape(-1)[:count].bool()


def _int_view(weight: torch.Tensor) -> torch.Tensor:
    view = _INT_VIEW.get(weight.element_size())
    if view is None:  # pragma: no cover - no such torch dtype today
        raise CheckpointError(f"Cannot store a {weight.dtype} tensor compactly; save with format='dense'.")
    return weight.detach().contiguous().view(view).reshape(-1)


def _bitmask_from_bits(weight: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    values = _select(raw, mask).view(weight.dtype)
    return {BITMASK: pack_bits(mask), VALUES: values, SHAPE: torch.tensor(list(weight.shape), dtype=torch.int64)}


def pack_bitmask(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encode ``weight`` as a packed bitmask of its non-zero bits plus the kept values in row-major order.

    Returns:
        `dict[str, torch.Tensor]`: ``{"_sparse_bitmask": uint8 [ceil(numel / 8)], "_sparse_values": [kept],
        "_sparse_shape": int64 [ndim]}``.
    """
    raw = _int_view(weight)
    return _bitmask_from_bits(weight, raw, raw != 0)


def unpack_bitmask(bitmask: torch.Tensor, values: torch.Tensor, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bitmask`; raises :class:`CheckpointError` when the sizes disagree."""
    count = math.prod(shape)
    mask = unpack_bits(bitmask, count)
    kept = int(mask.sum())
    if values.dim() != 1 or values.numel() != kept:
        raise CheckpointError(
            f"The bitmask keeps {kept} of {count} elements but {values.numel()} values are stored: the checkpoint "
            "is corrupted or its tensors come from different saves. Save it again."
        )
    out = values.new_zeros(count)
    out.masked_scatter_(mask.to(values.device), values)  # fills the set positions in row-major order
    return out.view(*shape)


def _select(raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``raw[mask]`` (row-major order); numpy's boolean indexing is several times faster than torch's on CPU."""
    if raw.device.type == "cpu":
        return torch.from_numpy(raw.numpy()[mask.numpy()])
    return raw[mask]


def _n_m_tables(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lookup tables over group codes (bit ``j`` set: element ``j`` of the group is non-zero), ``2**m`` rows each.

    Returns ``valid`` (at most ``n`` non-zeros), ``stored`` (the ``n`` positions kept: the non-zero ones plus, for
    a group with fewer, the lowest free ones, as an ``m``-wide mask) and ``positions`` (those ``n`` positions in
    increasing order). Tables replace a per-group sort.
    """
    valid, stored, positions = [], [], []
    for code in range(2**m):
        kept = [j for j in range(m) if code >> j & 1]
        chosen = sorted((kept + [j for j in range(m) if j not in kept])[:n]) if len(kept) <= n else list(range(n))
        valid.append(len(kept) <= n)
        stored.append([j in chosen for j in range(m)])
        positions.append(chosen)
    return torch.tensor(valid), torch.tensor(stored), torch.tensor(positions, dtype=torch.uint8)


def _group_codes(kept: torch.Tensor) -> torch.Tensor:
    """``[..., m]`` booleans -> ``[...]`` int32 codes, bit ``j`` for element ``j`` (int32 indexes tables directly)."""
    codes = kept[..., 0].to(torch.int32)
    for j in range(1, kept.shape[-1]):
        codes |= kept[..., j].to(torch.int32) << j
    return codes


def _pack_2bit(values: torch.Tensor) -> torch.Tensor:
    """Flat uint8 values in [0, 4) -> 4 per byte, the first in the lowest bits (numpy's uint8 ops on CPU)."""
    pad = (-values.numel()) % 4
    if pad:
        values = torch.cat([values, values.new_zeros(pad)])
    if values.device.type == "cpu":
        q = values.numpy().reshape(-1, 4)
        return torch.from_numpy(q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6))
    q = values.view(-1, 4)
    return q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)


def _unpack_2bit(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`_pack_2bit`: the first ``count`` values."""
    if packed.device.type == "cpu":
        p = packed.numpy()
        return torch.from_numpy(np.stack([(p >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)[:count])
    return torch.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], dim=1).reshape(-1)[:count]


def is_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive elements along the last dim has at most ``n`` non-zero bits."""
    if weight.dim() != 2 or weight.shape[-1] % m or not 0 < n < m:
        return False
    groups = nonzero_mask(weight).view(weight.shape[0], -1, m)
    return bool((groups.sum(dim=-1) <= n).all())


def pack_n_m(weight: torch.Tensor, n: int, m: int) -> dict[str, torch.Tensor]:
    """Encode an N:M-sparse 2-D ``weight`` (groups along the last dim) as dense kept values and 2-bit indices.

    Groups with fewer than ``n`` non-zeros keep some zeros (their positions are the lowest free ones), so
    every group stores exactly ``n`` values, in increasing position order.

    Args:
        weight (`torch.Tensor`): ``[rows, cols]`` with ``cols % m == 0`` and at most ``n`` non-zero bits per group.
        n (`int`), m (`int`): the pattern; ``m <= 4``.

    Returns:
        `dict[str, torch.Tensor]`: ``{"_sparse_values": [rows, cols // m * n], "_sparse_nm_indices": uint8
        [ceil(rows * cols // m * n / 4)], "_sparse_shape": int64 [2], "_sparse_nm": int64 [n, m]}``.

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: ``m > 4``, or the weight is not ``n:m`` sparse.
    """
    if m > _NM_MAX_M or not 0 < n < m:
        raise CheckpointError(f"2-bit N:M indices hold 0 < N < M <= {_NM_MAX_M}; got {n}:{m}. Use pack_bitmask instead.")
    if weight.dim() != 2 or weight.shape[-1] % m:
        raise CheckpointError(f"A {n}:{m} weight must be 2-D with columns divisible by {m}, got {list(weight.shape)}.")
    rows, cols = weight.shape
    raw = _int_view(weight)
    codes = _group_codes((raw != 0).view(rows, cols // m, m))
    valid, stored, positions = (t.to(weight.device) for t in _n_m_tables(n, m))
    if not bool(valid[codes].all()):
        raise CheckpointError(f"The weight of shape {list(weight.shape)} is not {n}:{m} sparse.")
    values = _select(raw, stored[codes].reshape(-1)).view(weight.dtype).view(rows, cols // m * n)
    packed = _pack_2bit(positions[codes].reshape(-1))
    return {
        VALUES: values,
        NM_INDICES: packed,
        SHAPE: torch.tensor([rows, cols], dtype=torch.int64),
        NM: torch.tensor([n, m], dtype=torch.int64),
    }


def unpack_n_m(
    values: torch.Tensor, indices: torch.Tensor, shape: list[int] | tuple[int, ...], n: int, m: int
) -> torch.Tensor:
    """Inverse of :func:`pack_n_m`; raises :class:`CheckpointError` when the sizes or indices disagree."""
    if len(shape) != 2 or not 0 < n < m <= _NM_MAX_M or shape[1] % m:
        raise CheckpointError(f"Invalid N:M record: shape {list(shape)} with pattern {n}:{m}.")
    rows, cols = shape
    count = rows * (cols // m) * n
    if tuple(values.shape) != (rows, cols // m * n):
        raise CheckpointError(
            f"A {n}:{m} weight of shape {list(shape)} stores values of shape {[rows, cols // m * n]}, the checkpoint "
            f"has {list(values.shape)}: it is corrupted or mixes tensors of different saves. Save it again."
        )
    if indices.dtype != torch.uint8 or indices.dim() != 1 or indices.numel() != math.ceil(count / 4):
        raise CheckpointError(
            f"A {n}:{m} weight of shape {list(shape)} needs {math.ceil(count / 4)} uint8 index bytes, the checkpoint "
            f"has {indices.numel()} {indices.dtype}. Save it again."
        )
    slots = _unpack_2bit(indices, count).view(rows, cols // m, n).to(torch.int32)
    increasing = bool((slots[..., 1:] > slots[..., :-1]).all()) if n > 1 else True
    if not increasing or (slots.numel() and int(slots.max()) >= m):
        raise CheckpointError(
            f"The {n}:{m} indices of a weight of shape {list(shape)} repeat, go out of order or point outside their "
            f"group of {m}: the checkpoint is corrupted. Save it again."
        )
    codes = torch.zeros(rows, cols // m, dtype=torch.int32, device=indices.device)
    for j in range(n):
        codes |= 1 << slots[..., j]
    stored = _n_m_tables(n, m)[1].to(indices.device)
    out = values.new_zeros(rows, cols // m, m)
    out.masked_scatter_(stored[codes].to(values.device), values)  # positions in increasing order, row-major
    return out.view(rows, cols)


def encoded_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data in an encoding (safetensors adds a small header per tensor)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def encode_weight(weight: torch.Tensor, n_m: tuple[int, int] | None = None) -> dict[str, torch.Tensor] | None:
    """Pick a compact encoding of ``weight``, or ``None`` when storing it dense is as small.

    Args:
        weight (`torch.Tensor`): a floating-point tensor.
        n_m (`tuple[int, int]`, *optional*): the N:M pattern it was pruned to; the ``nm`` layout is tried
            when ``M <= 4`` and the weight really has that pattern (otherwise the bitmask is used).
    """
    if not weight.is_floating_point() or weight.dim() < 1 or weight.numel() == 0:
        return None
    weight = weight.detach().contiguous()
    dense_nbytes = weight.numel() * weight.element_size()
    if n_m is not None and n_m[1] <= _NM_MAX_M and weight.dim() == 2 and weight.shape[-1] % n_m[1] == 0:
        # Same size as the bitmask for 2:4 (one index bit per element), in the layout sparse kernels use.
        try:
            encoded = pack_n_m(weight, *n_m)
        except CheckpointError:  # the weight does not follow its pattern (e.g. -0.0 kept): use the bitmask
            encoded = None
        if encoded is not None and encoded_nbytes(encoded) < dense_nbytes:
            return encoded
    # The bitmask pays when kept * itemsize + numel / 8 < numel * itemsize.
    raw = _int_view(weight)
    mask = raw != 0
    kept = int(mask.sum())
    if kept * weight.element_size() + math.ceil(weight.numel() / 8) + 8 * weight.dim() < dense_nbytes:
        return _bitmask_from_bits(weight, raw, mask)
    return None


def decode_weight(tensors: dict[str, torch.Tensor], name: str = "weight") -> torch.Tensor:
    """Rebuild a weight from its companions (keys are the suffixes in :data:`SUFFIXES`).

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: a companion is missing or its size does not match.
    """
    if SHAPE not in tensors or VALUES not in tensors:
        missing = [s for s in (SHAPE, VALUES) if s not in tensors]
        raise CheckpointError(
            f"The compact tensor '{name}' lacks {', '.join(name + s for s in missing)}: the checkpoint is incomplete. "
            "Copy it again or re-save it with hf_calibprune.save_sparse."
        )
    shape = [int(x) for x in tensors[SHAPE].reshape(-1).tolist()]
    values = tensors[VALUES]
    try:
        if BITMASK in tensors:
            return unpack_bitmask(tensors[BITMASK], values.reshape(-1), shape)
        if NM_INDICES in tensors:
            if NM not in tensors:
                raise CheckpointError(f"The N:M tensor '{name}' lacks '{name}{NM}' (its N and M).")
            n, m = (int(x) for x in tensors[NM].reshape(-1).tolist())
            return unpack_n_m(values, tensors[NM_INDICES], shape, n, m)
    except CheckpointError as error:
        raise CheckpointError(f"Compact tensor '{name}': {error}") from None
    raise CheckpointError(
        f"The compact tensor '{name}' has values but neither '{name}{BITMASK}' nor '{name}{NM_INDICES}': the "
        "checkpoint is incomplete. Copy it again or re-save it with hf_calibprune.save_sparse."
    )
