"""SparseSwaps (Zimmer et al. 2025, "SparseSwaps: Tractable LLM Pruning Mask Refinement at Scale",
arXiv 2512.10922): exact 1-swaps within each row, computed from the calibration Gram matrix.

With the mask fixed per row, the layer's reconstruction error ``tr(ΔW G ΔWᵀ)`` (``G = Σ x xᵀ``) is a sum of
independent row errors ``e = dᵀ G d``, where ``d`` is what the mask removed from the row. Pruning a kept weight
``p`` and restoring a pruned weight ``q`` changes ``d`` in two entries, so the change of ``e`` has a closed form
(with ``u = G d``)::

    Δ(p, q) = (2 a_p u_p + a_p² G_pp) + (−2 a_q u_q + a_q² G_qq) − 2 a_p a_q G_pq

Each iteration applies, in every row at once, the best swap of the whole row (N:M: of any one group, both
weights in the same group) if it lowers the row error, and stops a row at its first iteration without one.
Per-row counts and N:M groups are therefore kept exactly, and the error can only go down.

``a_j`` is the value weight ``j`` has when kept: kept weights keep the values the method gave them (SparseGPT's
updated weights stay as updated), and a regrown weight takes its original dense value. Nothing is re-solved
after the swaps, so with SparseGPT the refined mask is judged with the weights SparseGPT chose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError
from ..methods.base import PruneResult
from ..sparsity import InputStatistics, SparsityPattern
from .base import MaskRefiner

__all__ = ["SparseSwaps", "SparseSwapsOptions", "SwapState", "swap_delta"]

logger = logging.getLogger(__name__)

#: Iterations between exact recomputations of ``u = G d`` (updated incrementally in between).
_REFRESH_EVERY = 16
#: Default budget of float32 entries in one swap table (64 MiB).
_TABLE_BUDGET = 1 << 24


def swap_delta(
    values: torch.Tensor, removed: torch.Tensor, gram: torch.Tensor, prune: int, restore: int
) -> torch.Tensor:
    """The exact change of ``removedᵀ G removed`` when weight ``prune`` is pruned and ``restore`` restored.

    A reference for one row (the refiners evaluate it for all pairs at once). ``values`` are the values the
    weights take when kept, ``removed`` what the current mask removes from the row.
    """
    u = gram @ removed
    a_p, a_q = values[prune], values[restore]
    return (
        2 * a_p * u[prune] + a_p * a_p * gram[prune, prune]
        - 2 * a_q * u[restore] + a_q * a_q * gram[restore, restore]
        - 2 * a_p * a_q * gram[prune, restore]
    )


class SwapState:
    """Rows of a pruned weight as the swap refiners see them.

    Args:
        weight (`torch.Tensor`): the dense weight before pruning, ``[out, in]``.
        result (`PruneResult`): the method's pruned weight and mask.

    Attributes:
        target (`torch.Tensor`): the dense weight (what the layer should compute).
        values (`torch.Tensor`): each weight's value when kept (the method's value if it kept it, else dense).
        keep (`torch.BoolTensor`): the current mask, ``True`` where kept.
    """

    def __init__(self, weight: torch.Tensor, result: PruneResult) -> None:
        self.target = weight.to(torch.float32)
        pruned = result.mask.to(weight.device)
        self.values = torch.where(pruned, self.target, result.weight.to(self.target))
        self.keep = ~pruned

    def removed(self, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """``d = target − values ⊙ keep`` for ``rows``."""
        return self.target[rows] - self.values[rows] * self.keep[rows]

    def swap(self, rows: torch.Tensor, prune: torch.Tensor, restore: torch.Tensor) -> None:
        """Prune ``prune[i]`` and restore ``restore[i]`` in row ``rows[i]``."""
        self.keep[rows, prune] = False
        self.keep[rows, restore] = True

    def pruned_weight(self) -> torch.Tensor:
        return self.values.masked_fill(~self.keep, 0)


def row_errors(removed: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``dᵀ G d`` of every row of ``removed``, in float64."""
    removed = removed.double()
    return ((removed @ gram.double()) * removed).sum(dim=1)


def revert_worse_rows(state: SwapState, start_keep: torch.Tensor, gram: torch.Tensor) -> int:
    """Restore the starting mask of every changed row whose error did not go down (float32 rounding can
    accept a swap whose true change is a hair above zero); returns how many rows were restored."""
    changed = (state.keep != start_keep).any(dim=1).nonzero().squeeze(1)
    if changed.numel() == 0:
        return 0
    after = row_errors(state.removed(changed), gram)
    before = row_errors(state.target[changed] - state.values[changed] * start_keep[changed], gram)
    worse = changed[after > before]
    state.keep[worse] = start_keep[worse]
    return int(worse.numel())


def check_inputs(name: str, stats: InputStatistics, result: PruneResult, pattern: SparsityPattern) -> torch.Tensor:
    """The Gram matrix, after checking the refiner can work on this layer."""
    if stats is None or stats.gram is None:
        raise ConfigError(
            f"refiner '{name}' needs the Gram matrix of the layer inputs; gather InputStatistics(hessian=True) "
            "(the engine does so whenever `refine` is set)."
        )
    if not pattern.is_unstructured and result.mask.shape[1] % pattern.m:
        raise ConfigError(f"pattern {pattern} needs in_features divisible by {pattern.m}, got {result.mask.shape[1]}.")
    return stats.gram.to(result.weight.device, torch.float32)


def single_costs(values: torch.Tensor, u: torch.Tensor, keep: torch.Tensor, diagonal: torch.Tensor):
    """Error change of pruning each kept weight alone (``+inf`` where pruned) and of restoring each pruned
    weight alone (``+inf`` where kept)."""
    square = values * values * diagonal
    twice = 2 * values * u
    prune_cost = (square + twice).masked_fill_(~keep, float("inf"))
    restore_cost = (square - twice).masked_fill_(keep, float("inf"))
    return prune_cost, restore_cost


def refine_in_chunks(
    state: SwapState,
    start_keep: torch.Tensor,
    gram: torch.Tensor,
    chunk: int,
    refine_rows: Callable[[torch.Tensor], tuple[int, int]],
) -> PruneResult:
    """Run ``refine_rows`` over the rows ``chunk`` at a time, undo rows that got worse, and report the swaps."""
    rows = state.keep.shape[0]
    swaps = iterations = 0
    for start in range(0, rows, chunk):
        done, used = refine_rows(torch.arange(start, min(start + chunk, rows), device=gram.device))
        swaps += done
        iterations = max(iterations, used)
    reverted = revert_worse_rows(state, start_keep, gram)
    info = {"swaps": swaps, "swap_iterations": iterations}
    if reverted:
        info["rows_reverted"] = reverted
    return PruneResult(state.pruned_weight(), ~state.keep, info)


def check_swap_options(max_iterations: int, tolerance: float, chunk_rows: int | None) -> None:
    """Validate the options every swap-based refiner shares."""
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 0:
        raise ConfigError(f"`max_iterations={max_iterations!r}` must be an integer >= 0, e.g. 50.")
    if not 0 <= tolerance < 1:
        raise ConfigError(f"`tolerance={tolerance!r}` must be in [0, 1), e.g. 1e-6.")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ConfigError(f"`chunk_rows={chunk_rows!r}` must be a positive integer or None.")


@dataclass(frozen=True)
class SparseSwapsOptions:
    """Args:
    max_iterations (`int`, *optional*, defaults to 100): most swaps per row.
    tolerance (`float`, *optional*, defaults to 1e-6): a swap counts only if it lowers the row error by more
        than this fraction of it; a row stops at its first iteration without such a swap.
    candidates (`int`, *optional*): for unstructured patterns, search only the pairs among the ``candidates``
        kept weights cheapest to prune alone and the ``candidates`` pruned weights best to restore alone
        (``candidates²`` pairs per row instead of ``kept × pruned``). ``None`` searches every pair, which
        finds the best 1-swap but costs ``O(in²)`` per row per iteration: fine on a GPU, slow on CPUs for
        real models, where ``candidates=32`` usually finds the same swap (the best pair's weights rank
        near the top of their own cost). Every applied swap is still exact and lowers the error.
    chunk_rows (`int`, *optional*): rows searched at once; by default as many as keep the swap table near
        64 MiB.
    """

    max_iterations: int = 100
    tolerance: float = 1e-6
    candidates: int | None = None
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        check_swap_options(self.max_iterations, self.tolerance, self.chunk_rows)
        if self.candidates is not None and (not isinstance(self.candidates, int) or self.candidates < 1):
            raise ConfigError(f"`candidates={self.candidates!r}` must be a positive integer (e.g. 32) or None.")


class SparseSwaps(MaskRefiner):
    name = "swaps"
    Options = SparseSwapsOptions

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
        if pattern.is_unstructured and self.options.candidates is not None:
            chunk = self.options.chunk_rows or max(1, _TABLE_BUDGET // max(4 * columns, self.options.candidates**2))
        elif pattern.is_unstructured:
            chunk = self.options.chunk_rows or max(1, _TABLE_BUDGET // (columns * columns))
        else:
            chunk = self.options.chunk_rows or max(1, _TABLE_BUDGET // (columns * pattern.m))
        return refine_in_chunks(state, start_keep, gram, chunk, lambda block: self._refine_rows(state, block, gram, pattern))

    def _refine_rows(
        self, state: SwapState, rows: torch.Tensor, gram: torch.Tensor, pattern: SparsityPattern
    ) -> tuple[int, int]:
        diagonal = gram.diagonal()
        blocks = None if pattern.is_unstructured else _diagonal_blocks(gram, pattern.m)
        active = rows
        swaps = iteration = 0
        u = None
        while iteration < self.options.max_iterations and active.numel():
            values, keep = state.values[active], state.keep[active]
            if u is None or iteration % _REFRESH_EVERY == 0:
                removed = state.removed(active)
                u = removed @ gram
            error = (removed * u).sum(dim=1)
            prune_cost, restore_cost = single_costs(values, u, keep, diagonal)
            if blocks is None and self.options.candidates is not None:
                best, prune, restore = _best_candidate_pairs(
                    values, prune_cost, restore_cost, gram, self.options.candidates
                )
            elif blocks is None:
                best, prune, restore = _best_pairs(values, prune_cost, restore_cost, gram)
            else:
                best, prune, restore = _best_pairs_in_groups(values, prune_cost, restore_cost, blocks)
            accept = (best < 0) & (-best > self.options.tolerance * error)
            iteration += 1
            if not accept.any():
                break
            local = accept.nonzero().squeeze(1)
            prune, restore = prune[local], restore[local]
            state.swap(active[local], prune, restore)
            swaps += int(local.numel())
            # d changes by +a_p at p and −a_q at q, so u = G d changes by a_p G[p] − a_q G[q].
            a_p = values[local, prune].unsqueeze(1)
            a_q = values[local, restore].unsqueeze(1)
            u = u[local] + a_p * gram[prune] - a_q * gram[restore]
            removed = removed[local]
            index = torch.arange(local.numel(), device=removed.device)
            removed[index, prune] += a_p.squeeze(1)
            removed[index, restore] -= a_q.squeeze(1)
            active = active[local]
        return swaps, iteration


def _best_pairs(
    values: torch.Tensor, prune_cost: torch.Tensor, restore_cost: torch.Tensor, gram: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best (lowest Δ) swap of every row over all kept × pruned pairs: ``[R, in, in]`` table."""
    rows, columns = values.shape
    table = values.unsqueeze(2) * gram
    table.mul_(values.unsqueeze(1) * -2)
    table.add_(prune_cost.unsqueeze(2)).add_(restore_cost.unsqueeze(1))
    best, flat = table.view(rows, -1).min(dim=1)
    return best, flat // columns, flat % columns


def _best_candidate_pairs(
    values: torch.Tensor,
    prune_cost: torch.Tensor,
    restore_cost: torch.Tensor,
    gram: torch.Tensor,
    candidates: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best swap of every row among its ``candidates`` cheapest prunes × best restores: ``[R, k, k]`` table."""
    rows, columns = values.shape
    k = min(candidates, columns)
    prune_value, prune_index = prune_cost.topk(k, dim=1, largest=False)
    restore_value, restore_index = restore_cost.topk(k, dim=1, largest=False)
    coupling = gram[prune_index.unsqueeze(2), restore_index.unsqueeze(1)]
    coupling.mul_(values.gather(1, prune_index).unsqueeze(2) * -2).mul_(values.gather(1, restore_index).unsqueeze(1))
    coupling.add_(prune_value.unsqueeze(2)).add_(restore_value.unsqueeze(1))
    best, flat = coupling.view(rows, -1).min(dim=1)
    prune = prune_index.gather(1, (flat // k).unsqueeze(1)).squeeze(1)
    restore = restore_index.gather(1, (flat % k).unsqueeze(1)).squeeze(1)
    return best, prune, restore


def _diagonal_blocks(gram: torch.Tensor, m: int) -> torch.Tensor:
    """``[groups, m, m]``: the Gram entries between weights of the same N:M group."""
    groups = gram.shape[0] // m
    return gram.reshape(groups, m, groups, m).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _best_pairs_in_groups(
    values: torch.Tensor, prune_cost: torch.Tensor, restore_cost: torch.Tensor, blocks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best swap of every row with both weights in the same N:M group: ``[R, groups, m, m]`` table."""
    rows = values.shape[0]
    groups, m, _ = blocks.shape
    grouped = values.view(rows, groups, m)
    table = grouped.unsqueeze(3) * blocks
    table.mul_(grouped.unsqueeze(2) * -2)
    table.add_(prune_cost.view(rows, groups, m, 1)).add_(restore_cost.view(rows, groups, 1, m))
    best, flat = table.view(rows, -1).min(dim=1)
    group, within = flat // (m * m), flat % (m * m)
    return best, group * m + within // m, group * m + within % m
