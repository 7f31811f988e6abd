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
from ..sparsity import InputStatistics, SparsityPattern, prune_mask_from_scores
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
    while True:
        factor, info = torch.linalg.cholesky_ex(hessian + dampening * mean_diagonal * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
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

    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        options = self.options
        rows, columns = weight.shape
        work = weight.clone().float()
        mask = torch.zeros_like(work, dtype=torch.bool)
        hinv, used_dampening = inverse_hessian_cholesky(stats.gram, options.dampening, options.max_dampening)
        for start in range(0, columns, options.block_size):
            stop = min(start + options.block_size, columns)
            block = work[:, start:stop].clone()
            block_mask = torch.zeros_like(block, dtype=torch.bool)
            block_hinv = hinv[start:stop, start:stop]
            errors = torch.zeros_like(block)
            if pattern.is_unstructured and sparsity > 0:
                scores = block.square() / block_hinv.diagonal().square().unsqueeze(0)
                block_mask = self._choose_unstructured(scores, sparsity, columns, start, stop)
            for i in range(stop - start):
                if not pattern.is_unstructured and i % pattern.m == 0:
                    group = slice(i, i + pattern.m)
                    scores = block[:, group].square() / block_hinv.diagonal()[group].square().unsqueeze(0)
                    lowest = torch.topk(scores, pattern.pruned_per_group, dim=1, largest=False).indices
                    block_mask[:, group].scatter_(1, lowest, True)
                column = block[:, i]
                quantized = column.masked_fill(block_mask[:, i], 0)
                error = (column - quantized) / block_hinv[i, i]
                block[:, i:] -= error.unsqueeze(1) * block_hinv[i, i:].unsqueeze(0)
                block[:, i] = quantized
                errors[:, i] = error
            work[:, start:stop] = block
            mask[:, start:stop] = block_mask
            work[:, stop:] -= errors @ hinv[start:stop, stop:]
        work.masked_fill_(mask, 0)
        if not torch.isfinite(work).all():
            raise NumericalError("SparseGPT produced non-finite weights; raise `dampening` in method_options.")
        return PruneResult(work, mask, {"dampening": used_dampening})

    def _choose_unstructured(
        self, scores: torch.Tensor, sparsity: float, columns: int, start: int, stop: int
    ) -> torch.Tensor:
        if self.options.scope == "block":
            return prune_mask_from_scores(scores, sparsity, SparsityPattern(), scope="layer")
        block_mask = torch.zeros_like(scores, dtype=torch.bool)
        count = _row_counts(columns, sparsity, start, stop)
        if count:
            block_mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
        return block_mask
