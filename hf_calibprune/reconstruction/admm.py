"""The ADMM weight update of Boža ("Fast and Effective Weight Update for Pruned Large Language Models",
arXiv 2401.02938): with the mask fixed, re-fit the kept weights to ``min tr((W − Ŵ) G (W − Ŵ)ᵀ)``, ``Ŵ`` zero
where pruned, by alternating an unconstrained ridge step and a projection onto the mask.

With ``Z`` the masked iterate and ``U`` the scaled dual, each iteration is, for all rows at once::

    X ← (W G + ρ (Z − U)) (G + ρ I)⁻¹      # one matrix product: (G + ρ I)⁻¹ is factored once per Linear
    Z ← mask ⊙ (X + U)
    U ← U + X − Z

The inputs are first scaled to unit second moment per channel (``G ← D⁻¹ G D⁻¹``, ``W ← W D``), which leaves
the problem unchanged and makes one ``ρ`` fit every layer. ``Z`` starts from the method's (and refiner's)
weights. Every ``check_every`` iterations the relative error of ``Z`` is measured; the update stops once it
improves by less than ``tolerance`` of itself. The feasible iterate ``Z`` is returned, so pruned positions stay
exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import NumericalError
from .base import WeightReconstructor, check_options

__all__ = ["ADMMReconstructor", "ADMMOptions"]


@dataclass(frozen=True)
class ADMMOptions:
    """Args:
    rho (`float`, *optional*, defaults to 0.3): the ADMM penalty, as a multiple of the mean diagonal of the
        (scaled) Gram matrix. Smaller values move further from the start per iteration but converge less
        steadily; larger values stay closer to the start.
    max_iterations (`int`, *optional*, defaults to 100): most ADMM iterations per Linear.
    tolerance (`float`, *optional*, defaults to 1e-3): stop once ``check_every`` iterations lower the relative
        error by less than this fraction of it.
    check_every (`int`, *optional*, defaults to 10): iterations between measurements of the error (each costs
        about one iteration).
    """

    rho: float = 0.3
    max_iterations: int = 100
    tolerance: float = 1e-3
    check_every: int = 10

    def __post_init__(self) -> None:
        check_options(self, positive=("rho", "tolerance"), whole=("max_iterations", "check_every"))


class ADMMReconstructor(WeightReconstructor):
    name = "admm"
    Options = ADMMOptions

    def update(
        self, weight: torch.Tensor, start: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        options = self.options
        scale = gram.diagonal().sqrt()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # dead inputs: their weights stay as they are
        gram = gram / scale.unsqueeze(0) / scale.unsqueeze(1)
        weight, z = weight * scale, start * scale
        keep = keep.to(z.dtype)
        rho = options.rho * float(gram.diagonal().mean())
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        factor, failed = torch.linalg.cholesky_ex(gram + rho * eye)
        if failed:
            raise NumericalError(f"G + ρI is not positive definite with rho={options.rho}; pass a larger `rho`.")
        inverse = torch.cholesky_inverse(factor)
        target = weight @ gram
        reference = float((target * weight).sum())

        def relative_error(z: torch.Tensor) -> float:
            removed = weight - z
            return float(((removed @ gram) * removed).sum()) / reference

        u = torch.zeros_like(z)
        error = relative_error(z)
        iterations = 0
        while iterations < options.max_iterations:
            x = (target + rho * (z - u)) @ inverse
            z = (x + u) * keep
            u += x - z
            iterations += 1
            if iterations % options.check_every == 0 or iterations == options.max_iterations:
                previous, error = error, relative_error(z)
                if previous - error <= options.tolerance * previous:
                    break
        return z / scale, {"reconstruct_iterations": iterations}
