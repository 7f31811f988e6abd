"""Depth pruning: choose whole decoder blocks to remove on calibration data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import BlockMeasures, BlockSelector
from .scores import lowest_indices

__all__ = ["BlockInfluence", "BlockInfluenceOptions", "BlockPerplexity", "BlockPerplexityOptions"]


@dataclass(frozen=True)
class BlockInfluenceOptions:
    """Block influence has no options: one dense pass over the calibration data scores every block."""


class BlockInfluence(BlockSelector):
    """ShortGPT (Men et al. 2024, arXiv 2403.03853): remove the blocks whose output is most similar to their input.

    A block's influence is ``1 − cos(x_in, x_out)`` averaged over calibration tokens, measured once on the dense
    model; the ``count`` lowest go.
    """

    name = "block-influence"
    Options = BlockInfluenceOptions
    needs = "none"

    def select_blocks(self, count: int, measures: BlockMeasures) -> list[int]:
        return lowest_indices(torch.tensor(measures.influence()), count)


@dataclass(frozen=True)
class BlockPerplexityOptions:
    """Args:
    eval_samples (`int`, *optional*, defaults to 8): calibration sequences on which each candidate removal is
        measured (the first ones, rounded up to whole calibration batches of ``batch_size``); every removal of a
        round costs a pass over them.
    """

    eval_samples: int = 8

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if isinstance(self.eval_samples, bool) or not isinstance(self.eval_samples, int) or self.eval_samples < 1:
            raise ConfigError(f"`eval_samples={self.eval_samples!r}` must be a whole number of at least 1.")


class BlockPerplexity(BlockSelector):
    """Greedy: remove, one at a time, the block whose removal raises the calibration perplexity least.

    Each round measures the calibration loss without every remaining block in turn (on top of those already
    removed) and removes the best; ``count`` rounds. Costlier than block influence, but it measures the
    quantity that matters instead of a proxy.
    """

    name = "block-perplexity"
    Options = BlockPerplexityOptions
    needs = "none"

    def select_blocks(self, count: int, measures: BlockMeasures) -> list[int]:
        removed: list[int] = []
        for _ in range(count):
            losses = measures.loss_without(removed)
            best = min((loss, i) for i, loss in enumerate(losses) if i not in removed and math.isfinite(loss))
            removed.append(best[1])
        return sorted(removed)
