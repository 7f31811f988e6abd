"""DSnoT, Dynamic Sparse No Training (Zhang et al., ICLR 2024, arXiv 2310.08915): training-free prune-and-grow
cycles that lower each row's reconstruction error, with no backpropagation.

The reference code (github.com/zyxxmu/DSnoT, ``lib/prune.py``, ``prune_DSnoT``) tracks each row's *expected*
output shift ``Σ_pruned W_ij E[x_j]`` and, per cycle, grows the pruned weight that best cancels it (scaled by
the input variance) and prunes a low-Wanda-score kept weight, stopping a row when the shift changes sign or
falls under a threshold. The engine gathers the Gram matrix ``G = Σ x xᵀ`` for refiners (which holds the
second moments the mean and variance approximate), so this version scores candidates by the exact change of the
row error ``dᵀ G d`` instead:

- grow: the pruned weight ``q`` whose restoration alone lowers the error most, then prune the kept weight ``p``
  (N:M: in ``q``'s group) that costs least given ``q`` is back;
- prune first: the kept weight ``p`` that costs least alone, then the best weight ``q`` to restore given it;

and takes the better of the two if it lowers the row error (the exact change, as
:func:`~hf_calibprune.refinement.swaps.swap_delta`); a row stops at its first cycle without one. Each cycle is
``O(in)`` per row, against ``O(in²)`` for SparseSwaps' search over all pairs, so DSnoT is cheaper and
SparseSwaps finds better swaps. As in SparseSwaps, kept weights keep the method's values (SparseGPT's updates)
and a regrown weight takes its dense value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.base import PruneResult
from ..sparsity import InputStatistics, SparsityPattern
from .base import MaskRefiner
from .swaps import SwapState, check_inputs, check_swap_options, refine_in_chunks, single_costs

__all__ = ["DSnoT", "DSnoTOptions"]

#: Cycles between exact recomputations of ``u = G d`` (updated incrementally in between).
_REFRESH_EVERY = 16
#: Default budget of float32 entries per ``rows × in`` working tensor.
_CHUNK_BUDGET = 1 << 22


@dataclass(frozen=True)
class DSnoTOptions:
    """Args:
    max_iterations (`int`, *optional*, defaults to 50): most prune-and-grow cycles per row (the reference
        code's ``max_cycle_time``).
    tolerance (`float`, *optional*, defaults to 1e-6): a cycle's swap counts only if it lowers the row error by
        more than this fraction of it; a row stops at its first cycle without one.
    chunk_rows (`int`, *optional*): rows handled at once; by default enough to keep working tensors small.
    """

    max_iterations: int = 50
    tolerance: float = 1e-6
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        check_swap_options(self.max_iterations, self.tolerance, self.chunk_rows)


class DSnoT(MaskRefiner):
    name = "dsnot"
    Options = DSnoTOptions

    def refine(
        self,
        weight: torch.Tensor,
        result: PruneResult,
        stats: InputStatistics,
        sparsity: float,
        pattern: SparsityPattern,
    ) -> PruneResult:
        gram = check_inputs(self.name, stats, result, pattern)
        state = SwapState(weight, result)
        start_keep = state.keep.clone()
        columns = state.keep.shape[1]
        groups = None if pattern.is_unstructured else torch.arange(columns, device=gram.device) // pattern.m
        chunk = self.options.chunk_rows or max(1, _CHUNK_BUDGET // columns)
        return refine_in_chunks(state, start_keep, gram, chunk, lambda block: self._refine_rows(state, block, gram, groups))

    def _refine_rows(
        self, state: SwapState, rows: torch.Tensor, gram: torch.Tensor, groups: torch.Tensor | None
    ) -> tuple[int, int]:
        diagonal = gram.diagonal()
        active = rows
        swaps = cycle = 0
        while cycle < self.options.max_iterations and active.numel():
            values, keep = state.values[active], state.keep[active]
            if cycle % _REFRESH_EVERY == 0:
                removed = state.removed(active)
                u = removed @ gram
            error = (removed * u).sum(dim=1)
            prune_cost, restore_cost = single_costs(values, u, keep, diagonal)
            grow_first = _partner(values, restore_cost, prune_cost, gram, groups)
            prune_first = _partner(values, prune_cost, restore_cost, gram, groups)
            use_grow = grow_first[0] <= prune_first[0]
            best = torch.where(use_grow, grow_first[0], prune_first[0])
            prune = torch.where(use_grow, grow_first[2], prune_first[1])
            restore = torch.where(use_grow, grow_first[1], prune_first[2])
            accept = (best < 0) & (-best > self.options.tolerance * error)
            cycle += 1
            if not accept.any():
                break
            local = accept.nonzero().squeeze(1)
            prune, restore = prune[local], restore[local]
            state.swap(active[local], prune, restore)
            swaps += int(local.numel())
            a_p = values[local, prune]
            a_q = values[local, restore]
            u = u[local] + a_p.unsqueeze(1) * gram[prune] - a_q.unsqueeze(1) * gram[restore]
            removed = removed[local]
            index = torch.arange(local.numel(), device=removed.device)
            removed[index, prune] += a_p
            removed[index, restore] -= a_q
            active = active[local]
        return swaps, cycle


def _partner(
    values: torch.Tensor,
    first_cost: torch.Tensor,
    second_cost: torch.Tensor,
    gram: torch.Tensor,
    groups: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the best first weight alone, then its best partner given it: ``(Δ, first, second)`` per row.

    The pair's change is ``first_cost + second_cost − 2 a_first a_second G[first, second]``, the same for
    either order, so one function serves grow-then-prune and prune-then-grow.
    """
    first_value, first = first_cost.min(dim=1)
    a_first = values.gather(1, first.unsqueeze(1))
    score = second_cost - 2 * a_first * values * gram[first]
    if groups is not None:
        score = score.masked_fill(groups.unsqueeze(0) != groups[first].unsqueeze(1), float("inf"))
    second_value, second = score.min(dim=1)
    return first_value + second_value, first, second
