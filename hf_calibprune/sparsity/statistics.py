"""Streaming statistics of a Linear's inputs over calibration tokens, in float32, mergeable across processes."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["InputStatistics", "quadratic_trace"]

_TOKEN_CHUNK = 1024
#: Rows of the Gram matrix per product: only the blocks on and above the diagonal are computed (the Gram matrix is
#: symmetric), 54-61 % of the full product's multiply-adds at this strip height for widths of 576-1536. On one CPU
#: thread strips of 128 beat strips of 256 by 8-14 % at those widths (strips of 64 lose at 1,536).
_GRAM_STRIP = 128


def quadratic_trace(a: torch.Tensor, symmetric: torch.Tensor) -> torch.Tensor:
    """``tr(A S Aᵀ)`` for a symmetric ``S`` (``[n, n]``) and ``A`` (``[rows, n]``), as ``Σ (AᵀA ∘ S)``.

    Only the strips of ``AᵀA`` on and above the diagonal are computed (the mirror of each strip's part right of
    its diagonal square counts twice): about 60 % of the multiply-adds of ``A @ S``, and no ``[n, n]`` buffer.
    """
    total = a.new_zeros((), dtype=torch.float32)
    n = a.shape[1]
    for row in range(0, n, _GRAM_STRIP):
        stop = min(row + _GRAM_STRIP, n)
        products = (a[:, row:stop].t() @ a[:, row:]).mul_(symmetric[row:stop, row:])
        total += products[:, : stop - row].sum() + 2 * products[:, stop - row :].sum()
    return total


class InputStatistics:
    """Sums over calibration tokens of ``x_j`` and ``x_j²`` (norms, means, variances) and ``x xᵀ`` (SparseGPT).

    Padding tokens must be dropped by the caller before :meth:`add`; statistics are sums, so merging
    shards (several processes, several batches) is addition.

    Args:
        in_features (`int`): width of the inputs.
        hessian (`bool`): also accumulate the Gram matrix ``Σ x xᵀ``.
        device (`torch.device`): where the sums live.
    """

    def __init__(self, in_features: int, hessian: bool, device: torch.device | str = "cpu") -> None:
        self.in_features = in_features
        self.num_tokens = 0
        self.squared_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        # Accumulated on and above the diagonal only; below it stays zero until :attr:`gram` mirrors it.
        self._upper = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None
        self._gram: torch.Tensor | None = None

    def add(self, inputs: torch.Tensor) -> None:
        """Accumulate ``inputs`` of shape ``[tokens, in_features]`` (any float dtype)."""
        self.num_tokens += inputs.shape[0]
        # In slices of tokens: a float32 temporary of a whole one-pass batch (100 MB for 16k tokens × 1536) costs
        # several times more in fresh memory pages than the arithmetic on it.
        self._gram = None
        for part in inputs.split(_TOKEN_CHUNK):
            x = part.to(device=self.squared_sum.device, dtype=torch.float32)
            self.sum.add_(x.sum(dim=0))
            if self._upper is not None:
                for row in range(0, self.in_features, _GRAM_STRIP):
                    strip = x[:, row : row + _GRAM_STRIP]
                    self._upper[row : row + _GRAM_STRIP, row:].addmm_(strip.t(), x[:, row:])
            else:
                self.squared_sum.add_(x.square().sum(dim=0))

    @property
    def gram(self) -> torch.Tensor | None:
        """``Σ x xᵀ`` over all calibration tokens (``None`` unless gathered)."""
        if self._upper is not None and self._gram is None:
            self._gram = self._upper.triu() + self._upper.triu(1).t()
        return self._gram

    @gram.setter
    def gram(self, value: torch.Tensor | None) -> None:
        self._upper, self._gram = value, None

    @property
    def squared_norms(self) -> torch.Tensor:
        """``‖x_j‖²`` over all calibration tokens, per input channel ``j``."""
        if self._upper is not None:
            return self._upper.diagonal().clone()
        return self.squared_sum

    @property
    def mean(self) -> torch.Tensor:
        """The mean of each input channel over all calibration tokens."""
        return self.sum / max(self.num_tokens, 1)

    @property
    def variance(self) -> torch.Tensor:
        """The (sample) variance of each input channel over all calibration tokens (FLAP's fluctuation)."""
        tokens = max(self.num_tokens, 2)
        return ((self.squared_norms - self.num_tokens * self.mean.square()) / (tokens - 1)).clamp_min(0)

    @property
    def norms(self) -> torch.Tensor:
        """``‖x_j‖₂`` over all calibration tokens (Wanda's activation factor)."""
        return self.squared_norms.sqrt()

    def merge(self, other: InputStatistics) -> None:
        """Add another shard's sums into this one."""
        self.num_tokens += other.num_tokens
        self.squared_sum.add_(other.squared_sum.to(self.squared_sum.device))
        self.sum.add_(other.sum.to(self.sum.device))
        if self._upper is not None:
            self._upper.add_(other._upper.to(self._upper.device))
            self._gram = None

    def all_reduce(self) -> None:
        """Sum the statistics over every process of the default process group (no-op when not distributed)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        tokens = torch.tensor([float(self.num_tokens)], device=self.squared_sum.device)
        dist.all_reduce(tokens)
        self.num_tokens = int(tokens.item())
        dist.all_reduce(self.squared_sum)
        dist.all_reduce(self.sum)
        if self._upper is not None:
            dist.all_reduce(self._upper)
            self._gram = None
