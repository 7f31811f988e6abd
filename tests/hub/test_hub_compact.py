"""Pure pack / unpack functions of the compact format: bit-exact round trips, sizes, corrupted inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from hf_calibprune.errors import CheckpointError
from hf_calibprune.hub import compact

from .hub_helpers import bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _unstructured(rows: int, cols: int, sparsity: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator).to(dtype)
    weight[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    return weight


def _n_m(rows: int, cols: int, n: int, m: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator).to(dtype)
    groups = weight.view(rows, cols // m, m)
    drop = torch.rand(rows, cols // m, m, generator=generator).argsort(dim=-1)[..., : m - n]
    groups.scatter_(-1, drop, 0)
    return weight


def test_pack_bits_matches_numpy_packbits():
    flags = torch.rand(1003, generator=torch.Generator().manual_seed(1)) < 0.3
    packed = compact.pack_bits(flags)
    assert np.array_equal(packed.numpy(), np.packbits(flags.numpy()))
    assert torch.equal(compact.unpack_bits(packed, 1003), flags)
    # The torch-only path that accelerator tensors take gives the same bytes.
    assert torch.equal(compact._pack_bits_torch(flags), packed)
    assert torch.equal(compact._unpack_bits_torch(packed, 1003), flags)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitmask_round_trip_is_bit_exact_with_signed_zeros_and_nan(dtype):
    weight = _unstructured(24, 40, 0.5, dtype)
    weight[0, 0] = -0.0  # a signed zero must come back as -0.0, not +0.0
    weight[1, 1] = float("nan")
    weight[2, 2] = float("inf")
    encoded = compact.pack_bitmask(weight)
    assert encoded[compact.BITMASK].numel() == (24 * 40 + 7) // 8
    assert torch.equal(bits(compact.decode_weight(encoded)), bits(weight))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_m", [(2, 4), (1, 4), (1, 2), (1, 3), (2, 3)])
def test_n_m_round_trip_is_bit_exact(dtype, n_m):
    n, m = n_m
    weight = _n_m(16, 12 * m, n, m, dtype)
    weight[0, :m] = 0  # a group with fewer than n non-zeros stores zeros in its free slots
    encoded = compact.encode_weight(weight, n_m)
    assert compact.NM_INDICES in encoded and compact.BITMASK not in encoded
    assert tuple(encoded[compact.VALUES].shape) == (16, 12 * m // m * n)
    assert torch.equal(bits(compact.decode_weight(encoded)), bits(weight))


def test_four_of_eight_uses_the_bitmask_and_round_trips():
    weight = _n_m(16, 64, 4, 8, torch.bfloat16)
    encoded = compact.encode_weight(weight, (4, 8))
    assert compact.BITMASK in encoded and compact.NM_INDICES not in encoded
    assert torch.equal(bits(compact.decode_weight(encoded)), bits(weight))


def test_a_weight_that_breaks_its_n_m_pattern_falls_back_to_the_bitmask():
    weight = _n_m(8, 16, 2, 4, torch.float32)
    weight[0, :4] = torch.tensor([1.0, 2.0, 3.0, 0.0])  # three non-zeros in a 2:4 group
    encoded = compact.encode_weight(weight, (2, 4))
    assert compact.BITMASK in encoded
    assert torch.equal(bits(compact.decode_weight(encoded)), bits(weight))


def test_dense_weights_are_not_compacted():
    assert compact.encode_weight(torch.randn(32, 32)) is None
    assert compact.encode_weight(_unstructured(32, 32, 0.03, torch.bfloat16)) is None  # too few zeros to pay


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 37),
    sparsity=st.floats(0.0, 1.0),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_bitmask_round_trip_property(rows, cols, sparsity, dtype, seed):
    weight = _unstructured(rows, cols, sparsity, dtype, seed)
    encoded = compact.pack_bitmask(weight)
    restored = compact.unpack_bitmask(encoded[compact.BITMASK], encoded[compact.VALUES], list(weight.shape))
    assert torch.equal(bits(restored), bits(weight))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 9), n_m=st.sampled_from([(1, 2), (1, 4), (2, 4), (3, 4)]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_n_m_round_trip_property(rows, groups, n_m, dtype, seed):
    n, m = n_m
    weight = _n_m(rows, groups * m, n, m, dtype, seed)
    assert torch.equal(bits(compact.decode_weight(compact.pack_n_m(weight, n, m))), bits(weight))


@pytest.mark.parametrize("kind", ["unstructured", "2:4"])
def test_a_pruned_bf16_tensor_file_shrinks_below_0_6(tmp_path, kind):
    weight = _unstructured(1024, 1024, 0.5, torch.bfloat16) if kind == "unstructured" else _n_m(1024, 1024, 2, 4, torch.bfloat16)
    encoded = compact.encode_weight(weight, None if kind == "unstructured" else (2, 4))
    save_file({"w.weight": weight}, tmp_path / "dense.safetensors")
    save_file({"w.weight" + s: t for s, t in encoded.items()}, tmp_path / "compact.safetensors")
    ratio = (tmp_path / "compact.safetensors").stat().st_size / (tmp_path / "dense.safetensors").stat().st_size
    assert 0.5 < ratio < 0.6, ratio


def test_values_that_disagree_with_the_bitmask_are_refused():
    encoded = compact.pack_bitmask(_unstructured(8, 8, 0.5, torch.float32))
    encoded[compact.VALUES] = encoded[compact.VALUES][:-1]
    with pytest.raises(CheckpointError, match="bitmask keeps"):
        compact.decode_weight(encoded, "layer.weight")


def test_a_bitmask_of_the_wrong_length_is_refused():
    encoded = compact.pack_bitmask(_unstructured(8, 8, 0.5, torch.float32))
    encoded[compact.SHAPE] = torch.tensor([8, 16])
    with pytest.raises(CheckpointError, match="needs 16 bytes"):
        compact.decode_weight(encoded, "layer.weight")


@pytest.mark.parametrize("missing", [compact.BITMASK, compact.VALUES, compact.SHAPE])
def test_a_missing_companion_is_named(missing):
    encoded = compact.pack_bitmask(_unstructured(8, 8, 0.5, torch.float32))
    del encoded[missing]
    with pytest.raises(CheckpointError, match="layer.weight"):
        compact.decode_weight(encoded, "layer.weight")


def test_n_m_values_of_the_wrong_shape_are_refused():
    encoded = compact.pack_n_m(_n_m(8, 16, 2, 4, torch.float32), 2, 4)
    encoded[compact.VALUES] = encoded[compact.VALUES][:, :-1]
    with pytest.raises(CheckpointError, match="stores values of shape"):
        compact.decode_weight(encoded, "layer.weight")
