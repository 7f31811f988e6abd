"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774): prune column by column and update the remaining
weights with the optimal brain surgeon step from the inverse Hessian of the layer inputs.

Follows the reference ``fasterprune`` (github.com/IST-DASLab/sparsegpt, ``sparsegpt.py``) with two
deliberate differences: unstructured masks are chosen per output row by default, so every row reaches
its target count exactly (``scope="block"`` restores the reference's per-block threshold, with an exact
count), and weights of dead input channels are not forced to zero, so zeros come only from the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import NumericalError
from ..sparsity import InputStatistics, SparsityPattern, lowest_mask
from .base import PruneResult, PruningMethod

__all__ = ["SparseGPT", "SparseGPTOptions", "inverse_hessian_cholesky"]


@dataclass(frozen=True)
class SparseGPTOptions:
    """Args:
    block_size (`int`, *optional*, defaults to 128): columns handled per lazy-update block.
    dampening (`float`, *optional*, defaults to 0.01): added to the Hessian diagonal, as a fraction of its mean.
    max_dampening (`float`, *optional*, defaults to 10.0): when the damped Hessian is not positive definite,
        dampening is multiplied by 10 until it succeeds or exceeds this value.
    scope (`str`, *optional*, defaults to `"row"`): unstructured mask choice per output row (exact per-row
        sparsity) or per block of columns across all rows (``"block"``, as the reference code).
    """

    block_size: int = 128
    dampening: float = 0.01
    max_dampening: float = 10.0
    scope: Literal["row", "block"] = "row"


def inverse_hessian_cholesky(
    gram: torch.Tensor, dampening: float, max_dampening: float
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + λ·mean(diag H)·I)⁻¹``, raising λ until ``H`` is positive definite.

    Returns the factor and the dampening that worked.
    """
    hessian = gram.clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1
    mean_diagonal = hessian.diagonal().mean()
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    # With J the order-reversing permutation and J·H·J = L·Lᵀ, the upper factor of H⁻¹ is J·L⁻¹·J: one
    # factorization and one triangular solve instead of the reference's Cholesky, inverse and second Cholesky.
    reversed_hessian = hessian.flip(0, 1)
    while True:
        lower, info = torch.linalg.cholesky_ex(reversed_hessian + dampening * mean_diagonal * eye)
        if info == 0:
            upper = torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)
            if bool(torch.isfinite(upper.diagonal()).all()):
                return upper, dampening
        if dampening * 10 > max_dampening:
            raise NumericalError(
                f"the Hessian is not positive definite even with dampening {dampening:g}; pass more calibration "
                f"samples or raise method_options={{'max_dampening': ...}}."
            )
        dampening *= 10


def _row_counts(columns: int, sparsity: float, start: int, stop: int) -> int:
    """Weights to prune per row in columns ``[start, stop)`` so that the whole row gets exactly
    ``int(columns * sparsity)``, spread evenly over blocks."""
    total = int(columns * sparsity)
    return total * stop // columns - total * start // columns


class SparseGPT(PruningMethod):
    name = "sparsegpt"
    Options = SparseGPTOptions
    needs = "hessian"

    def __init__(self, options: SparseGPTOptions | None = None) -> None:
        super().__init__(options)
        # Linears fed the same input (q/k/v, gate/up) share one statistics object, so its factor is reused.
        self._factor_for: tuple[InputStatistics, int, torch.Tensor, float] | None = None

    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        options = self.options
        columns = weight.shape[1]
        hinv, used_dampening = self._inverse_factor(stats)
        # Columns as contiguous rows: each step of the sweep below reads and updates whole memory rows.
        work = weight.t().float().contiguous()
        mask = torch.zeros_like(work, dtype=torch.bool)
        # N:M groups must not straddle two blocks.
        step = options.block_size if pattern.is_unstructured else max(pattern.m, options.block_size // pattern.m * pattern.m)
        for start in range(0, columns, step):
            stop = min(start + step, columns)
            block, block_mask, block_hinv = work[start:stop], mask[start:stop], hinv[start:stop, start:stop]
            diagonal = block_hinv.diagonal().unsqueeze(1)
            errors = torch.empty_like(block)
            if pattern.is_unstructured:
                scale = self._choose_unstructured(block, diagonal, block_mask, sparsity, columns, start, stop)
            for i in range(stop - start):
                if not pattern.is_unstructured and i % pattern.m == 0:
                    group = slice(i, i + pattern.m)
                    scores = (block[group] / diagonal[group]).square()
                    lowest = torch.topk(scores, pattern.pruned_per_group, dim=0, largest=False).indices
                    block_mask[group].scatter_(0, lowest, True)
                    scale = block_mask[group] / diagonal[group]
                # The optimal-brain-surgeon step: remove the pruned part of column i and spread its error over
                # the later columns of the block. Column i itself is zeroed by the final mask.
                torch.mul(block[i], scale[i if pattern.is_unstructured else i % pattern.m], out=errors[i])
                block[i + 1 :].addr_(block_hinv[i, i + 1 :], errors[i], alpha=-1)
            work[stop:].addmm_(hinv[start:stop, stop:].t(), errors, alpha=-1)
        work.masked_fill_(mask, 0)
        if not torch.isfinite(work).all():
            raise NumericalError("SparseGPT produced non-finite weights; raise `dampening` in method_options.")
        return PruneResult(work.t().contiguous(), mask.t().contiguous(), {"dampening": used_dampening})

    def _inverse_factor(self, stats: InputStatistics) -> tuple[torch.Tensor, float]:
        cached = self._factor_for
        if cached is not None and cached[0] is stats and cached[1] == stats.num_tokens:
            return cached[2], cached[3]
        hinv, dampening = inverse_hessian_cholesky(stats.gram, self.options.dampening, self.options.max_dampening)
        self._factor_for = (stats, stats.num_tokens, hinv, dampening)
        return hinv, dampening

    def _choose_unstructured(
        self,
        block: torch.Tensor,
        diagonal: torch.Tensor,
        block_mask: torch.Tensor,
        sparsity: float,
        columns: int,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Fill ``block_mask`` (``[block columns, rows]``) from the OBS scores; return mask / diagonal."""
        if sparsity > 0:
            scores = (block / diagonal).square()
            if self.options.scope == "block":
                chosen = lowest_mask(scores.reshape(1, -1), int(scores.numel() * sparsity)).view_as(scores)
            else:
                # Selecting along contiguous memory is about twice as fast as along dim 0.
                chosen = lowest_mask(scores.t().contiguous(), _row_counts(columns, sparsity, start, stop)).t()
            block_mask.copy_(chosen)
        return block_mask / diagonal
