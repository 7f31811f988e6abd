"""The contract every pruning method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from ..registry import options_from_dict
from ..sparsity import InputStatistics, SparsityPattern

__all__ = ["MASK_PATTERNS", "PruningMethod", "PruneResult", "StatisticsNeed"]

#: Pattern kinds that zero weights in place (``"N:M"`` stands for every N:M pattern).
MASK_PATTERNS = ("unstructured", "N:M")

#: What a method needs from calibration: nothing, per-channel input norms, or the full Gram matrix.
StatisticsNeed = Literal["none", "norms", "hessian"]


@dataclass
class PruneResult:
    """A pruned weight and what happened.

    Args:
        weight (`torch.Tensor`): the new weight, float32, ``[out_features, in_features]``.
        mask (`torch.BoolTensor`): ``True`` where a weight was pruned.
        info (`dict`): method-specific facts for the report (e.g. the damping SparseGPT used).
    """

    weight: torch.Tensor
    mask: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class PruningMethod(ABC):
    """A pruning method: an ``Options`` dataclass, the statistics it needs, and ``prune``.

    Subclasses set ``name``, ``Options`` and ``needs``; the engine gathers the statistics and calls
    :meth:`prune` once per Linear with its weight in float32 as ``[out_features, in_features]``. A method that
    also scores whole input channels for structured pruning (``pattern="channels"``) lists ``"channels"`` in
    ``patterns`` and implements :meth:`channel_scores`; one that scores whole experts (``pattern="experts"``) lists
    ``"experts"`` and implements :meth:`expert_scores`.
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    needs: ClassVar[StatisticsNeed] = "norms"
    #: Pattern kinds this method prunes: mask patterns (``"unstructured"``, ``"N:M"``) and/or structures
    #: (``"channels"``, ``"blocks"``, ``"experts"``).
    patterns: ClassVar[tuple[str, ...]] = MASK_PATTERNS

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> PruningMethod:
        """Build from a plain dict, with an error naming any unknown option."""
        return cls(options_from_dict(f"method '{cls.name}'", cls.Options, options, "method_options"))

    @abstractmethod
    def prune(
        self, weight: torch.Tensor, stats: InputStatistics | None, sparsity: float, pattern: SparsityPattern
    ) -> PruneResult:
        """Prune ``weight`` to ``sparsity`` under ``pattern`` using calibration ``stats``."""

    def channel_scores(self, weight: torch.Tensor, stats: InputStatistics | None) -> torch.Tensor:
        """Importance of each input channel of ``weight`` (``[out, in]``) as a whole, ``[in]`` (structured pruning).

        Only methods listing ``"channels"`` in ``patterns`` implement it.
        """
        raise NotImplementedError(f"method '{self.name}' does not score whole channels.")

    def expert_scores(self, weight_norms: torch.Tensor, saliency: torch.Tensor | None) -> torch.Tensor:
        """Importance of each routed expert of one Mixture-of-Experts block, ``[num_experts]`` (structured pruning).

        Args:
            weight_norms (`torch.Tensor`): each expert's weight norm, ``sqrt(Σ W²)`` over all its matrices.
            saliency (`torch.Tensor`, *optional*): REAP's saliency of each expert on calibration data (the mean of
                ``gate · ‖expert(x)‖₂`` over the tokens routed to it); ``None`` for methods with ``needs="none"``.

        Only methods listing ``"experts"`` in ``patterns`` implement it.
        """
        raise NotImplementedError(f"method '{self.name}' does not score whole experts.")
