"""The contract of a mask refiner: improve a pruned weight's mask using the calibration Gram matrix."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..methods.base import PruneResult
from ..registry import options_from_dict
from ..sparsity import InputStatistics, SparsityPattern

__all__ = ["MaskRefiner"]


class MaskRefiner(ABC):
    """Refines the mask a method chose, keeping its sparsity constraints (per row / per N:M group).

    The engine gathers the Gram matrix ``Σ x xᵀ`` (``stats.gram``) whenever a refiner is configured and calls
    :meth:`refine` with the dense weight and the method's result, both ``[out, in]`` float32.
    """

    name: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> MaskRefiner:
        """Build from a plain dict, with an error naming any unknown option."""
        return cls(options_from_dict(f"refiner '{cls.name}'", cls.Options, options, "refine_options"))

    @abstractmethod
    def refine(
        self,
        weight: torch.Tensor,
        result: PruneResult,
        stats: InputStatistics,
        sparsity: float,
        pattern: SparsityPattern,
    ) -> PruneResult:
        """Return a result whose reconstruction error is no larger than ``result``'s."""
