"""What structured methods share: the structured pattern names and the contract of a block selector."""

from __future__ import annotations

from typing import Iterable, Protocol

import torch

from ..errors import ConfigError
from ..methods.base import PruneResult, PruningMethod
from ..sparsity import InputStatistics, SparsityPattern

__all__ = ["STRUCTURED_PATTERNS", "BlockMeasures", "BlockSelector", "StructuredMethod"]

#: ``"channels"``: attention heads (whole key/value groups) and MLP channels; ``"blocks"``: whole decoder blocks;
#: ``"experts"``: whole routed experts of Mixture-of-Experts blocks.
STRUCTURED_PATTERNS = ("channels", "blocks", "experts")


class StructuredMethod(PruningMethod):
    """A method that only removes whole structures; it has no per-weight mask to offer."""

    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        raise ConfigError(
            f"method '{self.name}' removes whole structures; use it with pattern={' or '.join(map(repr, self.patterns))}."
        )


class BlockMeasures(Protocol):
    """What the engine measures for a block selector on calibration data."""

    def influence(self) -> list[float]:
        """ShortGPT's block influence of every block (1 − mean cosine of its input and output), dense model."""

    def loss_without(self, removed: Iterable[int]) -> list[float]:
        """Calibration loss (mean next-token NLL) of the model without ``removed`` and, in turn, without each other
        block too: entry ``i`` is the loss without ``removed ∪ {i}`` (``inf`` for blocks already in ``removed``)."""


class BlockSelector(StructuredMethod):
    """Chooses which decoder blocks to remove (``pattern="blocks"``)."""

    patterns = ("blocks",)

    def select_blocks(self, count: int, measures: BlockMeasures) -> list[int]:
        """The indices of ``count`` blocks to remove."""
        raise NotImplementedError
