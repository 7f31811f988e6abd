"""Compact storage of pruned weights: pure pack / unpack functions (torch only).

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
``model.layers.0.mlp.up_proj.weight_sparse_values``; :func:`encode_weight` picks the smallest encoding (dense
when compaction would not pay), :func:`decode_weight` reverses it and checks every size, raising
:class:`~hf_calibprune.errors.CheckpointError` on a missing or mismatched companion.
"""

from __future__ import annotations

import math

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
_MSB_FIRST = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


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
    view = _INT_VIEW.get(weight.element_size())
    if view is None:  # pragma: no cover - no such torch dtype today
        raise CheckpointError(f"Cannot store a {weight.dtype} tensor compactly; save with format='dense'.")
    return weight.contiguous().view(view) != 0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a flat boolean tensor into ``uint8``, 8 per byte, most significant bit first (``np.packbits``)."""
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = _MSB_FIRST.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` bits as a flat boolean tensor."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise CheckpointError(f"A packed bitmask must be a 1-D uint8 tensor, got {packed.dtype} {list(packed.shape)}.")
    if packed.numel() != math.ceil(count / 8):
        raise CheckpointError(
            f"A bitmask for {count} elements needs {math.ceil(count / 8)} bytes, the checkpoint has {packed.numel()}."
        )
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.reshape(-1)[:count].bool()


def pack_bitmask(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encode ``weight`` as a packed bitmask of its non-zero bits plus the kept values in row-major order.

    Returns:
        `dict[str, torch.Tensor]`: ``{"_sparse_bitmask": uint8 [ceil(numel / 8)], "_sparse_values": [kept],
        "_sparse_shape": int64 [ndim]}``.
    """
    mask = nonzero_mask(weight).reshape(-1)
    return {
        BITMASK: pack_bits(mask),
        VALUES: weight.reshape(-1)[mask].clone(),
        SHAPE: torch.tensor(list(weight.shape), dtype=torch.int64),
    }


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
    out[mask.to(values.device)] = values
    return out.view(*shape)


def is_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive elements along the last dim has at most ``n`` non-zero bits."""
    if weight.dim() != 2 or weight.shape[-1] % m or not 0 < n < m:
        return False
    groups = nonzero_mask(weight).view(weight.shape[0], -1, m)
    return bool((groups.sum(dim=-1) <= n).all())


def pack_n_m(weight: torch.Tensor, n: int, m: int) -> dict[str, torch.Tensor]:
    """Encode an N:M-sparse 2-D ``weight`` (groups along the last dim) as dense kept values and 2-bit indices.

    Groups with fewer than ``n`` non-zeros keep some zeros (their positions are the lowest free ones), so
    every group stores exactly ``n`` values.

    Args:
        weight (`torch.Tensor`): ``[rows, cols]`` with ``cols % m == 0`` and at most ``n`` non-zero bits per group.
        n (`int`), m (`int`): the pattern; ``m <= 4``.

    Returns:
        `dict[str, torch.Tensor]`: ``{"_sparse_values": [rows, cols // m * n], "_sparse_nm_indices": uint8
        [ceil(rows * cols // m * n / 4)], "_sparse_shape": int64 [2], "_sparse_nm": int64 [n, m]}``.
    """
    if m > _NM_MAX_M:
        raise CheckpointError(f"2-bit N:M indices hold M <= {_NM_MAX_M}; got {n}:{m}. Use pack_bitmask instead.")
    if not is_n_m(weight, n, m):
        raise CheckpointError(f"The weight of shape {list(weight.shape)} is not {n}:{m} sparse.")
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // m, m)
    kept = nonzero_mask(weight).view(rows, cols // m, m)
    # Non-zeros first, then the lowest positions: n positions per group, returned in increasing order.
    order_key = (~kept).to(torch.int64) * m + torch.arange(m, device=weight.device)
    index = order_key.topk(n, dim=-1, largest=False).values % m
    index, _ = index.sort(dim=-1)
    values = groups.gather(-1, index).reshape(rows, cols // m * n)
    flat = index.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 4
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    quads = flat.view(-1, 4)
    packed = quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)
    return {
        VALUES: values.clone(),
        NM_INDICES: packed,
        SHAPE: torch.tensor([rows, cols], dtype=torch.int64),
        NM: torch.tensor([n, m], dtype=torch.int64),
    }


def unpack_n_m(
    values: torch.Tensor, indices: torch.Tensor, shape: list[int] | tuple[int, ...], n: int, m: int
) -> torch.Tensor:
    """Inverse of :func:`pack_n_m`; raises :class:`CheckpointError` when the sizes disagree."""
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
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=indices.device)
    index = ((indices.unsqueeze(1) >> shifts) & 3).reshape(-1)[:count].to(torch.int64)
    index = index.view(rows, cols // m, n)
    if index.numel() and int(index.max()) >= m:
        raise CheckpointError(f"An index of the {n}:{m} weight points outside its group of {m}. Save it again.")
    out = values.new_zeros(rows, cols // m, m)
    out.scatter_(-1, index.to(values.device), values.view(rows, cols // m, n))
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
    if n_m is not None and n_m[1] <= _NM_MAX_M and weight.dim() == 2 and is_n_m(weight, *n_m):
        # Same size as the bitmask for 2:4 (one index bit per element), in the layout sparse kernels use.
        encoded = pack_n_m(weight, *n_m)
        if encoded_nbytes(encoded) < dense_nbytes:
            return encoded
    # The bitmask pays when kept * itemsize + numel / 8 < numel * itemsize.
    kept = int(nonzero_mask(weight).sum())
    if kept * weight.element_size() + math.ceil(weight.numel() / 8) + 8 * weight.dim() < dense_nbytes:
        return pack_bitmask(weight)
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
