"""Block-wise reconstruction: after every Linear of a decoder block is pruned, adjust the block's kept weights so
that its outputs on the calibration activations move back towards the dense model's, the masks fixed.

The engine gives each block the inputs of the pruned model (the previous blocks already pruned and re-fitted)
and, as targets, the dense model's outputs of the same block on the dense model's own inputs, so a block also
makes up for error that earlier blocks left. The loss is the mean squared difference over real (non-padding)
tokens; Adam updates float32 master copies of the pruned weights, one step per few samples, and gradients
and weights are zero wherever the mask pruned. The engine keeps the re-fitted block only where it lowered the
block's error on the calibration data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .base import Reconstructor, check_options

__all__ = ["BlockOptions", "BlockReconstructor"]


@dataclass(frozen=True)
class BlockOptions:
    """Args:
    epochs (`int`, *optional*, defaults to 1): passes over the calibration samples.
    learning_rate (`float`, *optional*, defaults to 1e-3): Adam's step size (in the weights' own units;
        SmolLM2's are about 0.02-0.05 in size).
    samples_per_step (`int`, *optional*, defaults to 1): calibration samples per Adam step (at most the
        engine's ``batch_size``).
    """

    epochs: int = 1
    learning_rate: float = 1e-3
    samples_per_step: int = 1

    def __post_init__(self) -> None:
        check_options(self, positive=("learning_rate",), whole=("epochs", "samples_per_step"))


class BlockReconstructor(Reconstructor):
    """Re-fits a whole pruned block to the dense model's block outputs (``reconstruct="block"``)."""

    name = "block"
    Options = BlockOptions

    def fit(
        self,
        weights: list[torch.Tensor],
        batch_loss: Callable[[int], torch.Tensor | None],
        steps: int,
        reduce_gradients: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> dict[str, Any]:
        """Train ``weights`` (the block's pruned parameters, in place) for ``epochs`` passes of ``steps`` steps.

        Args:
            weights: the parameters to adjust; their zeros are the masks and stay zero.
            batch_loss: the loss of step ``step``'s calibration samples computed with the current ``weights``
                (autograd on), or ``None`` for a step this process has no samples for (it still takes part).
            steps: steps per epoch (the same on every process).
            reduce_gradients: averages the float32 gradients over processes, in place.
        """
        keeps = [weight != 0 for weight in weights]
        masters = [weight.detach().float().clone() for weight in weights]
        optimizer = torch.optim.Adam(masters, lr=self.options.learning_rate)
        flags = [weight.requires_grad for weight in weights]
        try:
            for weight in weights:
                weight.requires_grad_(True)
            for _ in range(self.options.epochs):
                for step in range(steps):
                    for weight in weights:
                        weight.grad = None
                    with torch.enable_grad():
                        loss = batch_loss(step)
                        if loss is not None:
                            loss.backward()
                    for master, weight, keep in zip(masters, weights, keeps):
                        grad = weight.grad.float() if weight.grad is not None else torch.zeros_like(master)
                        master.grad = grad.masked_fill_(~keep, 0)
                    if reduce_gradients is not None:
                        reduce_gradients([master.grad for master in masters])
                    optimizer.step()
                    with torch.no_grad():
                        for master, weight, keep in zip(masters, weights, keeps):
                            weight.copy_(master.masked_fill_(~keep, 0))
        finally:
            for weight, flag in zip(weights, flags):
                weight.grad = None
                weight.requires_grad_(flag)
        return {"block_epochs": self.options.epochs}
