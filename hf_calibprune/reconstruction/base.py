"""The contract of a weight reconstructor: re-fit the kept weights of a pruned Linear, the mask fixed."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..methods.base import PruneResult
from ..registry import options_from_dict
from ..sparsity import InputStatistics

__all__ = ["Reconstructor", "WeightReconstructor", "check_options", "layer_error"]


def check_options(options: Any, positive: tuple[str, ...] = (), whole: tuple[str, ...] = ()) -> None:
    """Raise a :class:`ConfigError` naming the first of ``options``' fields that is not a positive number
    (``positive``) or a whole number of at least 1 (``whole``), with its default as an example."""
    fields = type(options).__dataclass_fields__
    for name in positive:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"`reconstruct_options={{'{name}': {value!r}}}` must be a positive number, such as "
                f"{fields[name].default}."
            )
    for name in whole:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"`reconstruct_options={{'{name}': {value!r}}}` must be a whole number of at least 1, such as "
                f"{fields[name].default}."
            )


def layer_error(removed: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor) -> float:
    """``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` in float64: the relative reconstruction error on the calibration inputs."""
    gram = gram.double()
    removed, weight = removed.to(gram), weight.to(gram)
    reference = float(((weight @ gram) * weight).sum())
    return float(((removed @ gram) * removed).sum()) / reference if reference else 0.0


class Reconstructor:
    """A registered reconstructor: its name and options. :class:`WeightReconstructor` re-fits one Linear at a
    time from its Gram matrix; :class:`~hf_calibprune.reconstruction.block.BlockReconstructor` a whole block on
    the calibration activations."""

    name: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> Reconstructor:
        """Build from a plain dict, with an error naming any unknown option."""
        return cls(options_from_dict(f"reconstructor '{cls.name}'", cls.Options, options, "reconstruct_options"))


class WeightReconstructor(Reconstructor, ABC):
    """Re-fits the weights a method (and refiner) kept so that the layer's outputs on the calibration inputs
    move back towards the dense ones: ``min ‖(W − Ŵ) X‖²`` over Ŵ with Ŵ zero wherever the mask pruned.

    The engine gathers the Gram matrix ``G = Σ x xᵀ`` (``stats.gram``) whenever a reconstructor is configured
    and calls :meth:`reconstruct` with the dense weight and the pruned result, both ``[out, in]`` float32.
    Subclasses implement :meth:`update`; :meth:`reconstruct` keeps the mask, keeps the method's weights where
    the update did not lower the error, and records the error before and after in ``info``.
    """

    def reconstruct(self, weight: torch.Tensor, result: PruneResult, stats: InputStatistics) -> PruneResult:
        """Return ``result`` with re-fitted kept weights, or ``result`` itself where they would not help.

        The returned weight is exactly zero wherever ``result.mask`` is ``True``, and its error
        ``tr(ΔW G ΔWᵀ)`` is never above ``result``'s.
        """
        if stats is None or stats.gram is None:
            raise ConfigError(
                f"reconstructor '{self.name}' needs the Gram matrix of the layer inputs; gather "
                "InputStatistics(hessian=True) (the engine does so whenever `reconstruct` is set)."
            )
        gram = stats.gram.to(result.weight.device, torch.float32)
        weight = weight.to(result.weight.device, torch.float32)
        mask = result.mask.to(result.weight.device)
        before = layer_error(weight - result.weight, weight, gram)
        info = {"error_before_reconstruct": before, "error_after_reconstruct": before}
        if not mask.any():  # nothing pruned: the dense weight is already optimal, keep it bit for bit
            return PruneResult(result.weight, result.mask, {**result.info, **info})
        updated, details = self.update(weight, result.weight.float(), ~mask, gram)
        updated = updated.masked_fill(mask, 0)
        after = layer_error(weight - updated, weight, gram)
        if not (after < before and bool(torch.isfinite(updated).all())):
            return PruneResult(result.weight, result.mask, {**result.info, **info, **details, "reconstructed": False})
        info["error_after_reconstruct"] = after
        return PruneResult(updated, result.mask, {**result.info, **info, **details, "reconstructed": True})

    @abstractmethod
    def update(
        self, weight: torch.Tensor, start: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The re-fitted weight (zero outside ``keep``) from the dense ``weight`` and the pruned ``start``,
        and facts for the report (iterations, ...)."""
