"""Block-wise reconstruction in the sequential schedule (``reconstruct="block"``): the dense model's stream of
hidden states beside the pruned one, the block's error against it, and the fit with keep-the-better."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed import all_reduce

from ..errors import ConfigError
from ..reconstruction import BlockReconstructor
from .distributed import all_reduce_sums, broadcast_, is_distributed, process_index, world_size

__all__ = ["FittedWeights", "block_error", "fit_block", "sample_rows", "trainable_weights"]

#: Runs the block on the samples ``rows`` of batch ``b``'s given hidden states and returns its hidden output.
BlockCall = Callable[[torch.Tensor, int, slice], torch.Tensor]


def trainable_weights(linears: dict[str, nn.Module], fused: list[tuple[nn.Module, str]]) -> list[torch.Tensor]:
    """The pruned parameters of a block: its Linears' weights and its fused experts' 3-D parameters (module,
    parameter name)."""
    weights = [module.weight for module in linears.values()] + [getattr(module, name) for module, name in fused]
    if any(weight.device.type == "meta" for weight in weights):
        raise ConfigError(
            "reconstruct='block' trains each block's kept weights in memory, but this block's weights are offloaded "
            "(device_map with 'cpu' or 'disk'); load the model on one device and pass execution_device='cuda'."
        )
    return weights


def sample_rows(value: Any, rows: slice, size: int) -> Any:
    """``value`` (block call arguments: tensors in tuples, lists and dicts) with every tensor of ``size`` samples
    cut to ``rows``; tensors shared by all samples (a leading 1, 1-D positions) pass unchanged."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() > 1 and value.shape[0] == size else value
    if isinstance(value, (tuple, list)):
        return type(value)(sample_rows(item, rows, size) for item in value)
    if isinstance(value, dict):
        return {key: sample_rows(item, rows, size) for key, item in value.items()}
    return value


def _squared_error(output: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The squared difference summed over real tokens, and the number of values summed."""
    mask = token_mask.to(output.device)
    difference = (output.float() - target.to(output.device, torch.float32)) * mask.unsqueeze(-1)
    return difference.square().sum(), float(mask.sum()) * output.shape[-1]


def block_error(outputs: Iterable[torch.Tensor], targets: list[torch.Tensor], token_masks: list[torch.Tensor]) -> float:
    """``Σ‖f(x) − y‖² / Σ‖y‖²`` over the real tokens of every batch and process (``outputs`` may be produced one
    batch at a time)."""
    error = reference = 0.0
    for output, target, mask in zip(outputs, targets, token_masks, strict=True):
        error += float(_squared_error(output, target, mask)[0])
        reference += float(_squared_error(torch.zeros_like(target), target, mask)[0])
    error, reference = all_reduce_sums([error, reference])
    return error / reference if reference else 0.0


def _average_over_processes(tensors: list[torch.Tensor]) -> None:
    for tensor in tensors:
        all_reduce(tensor)
        tensor /= world_size()


@dataclass
class FittedWeights:
    """The weights a fit changed and their values before it."""

    weights: list[torch.Tensor]
    saved: list[torch.Tensor]

    def restore(self) -> None:
        with torch.no_grad():
            for weight, start in zip(self.weights, self.saved):
                weight.copy_(start)


def fit_block(
    reconstructor: BlockReconstructor,
    weights: list[torch.Tensor],
    call: BlockCall,
    inputs: list[torch.Tensor],
    targets: list[torch.Tensor],
    token_masks: list[torch.Tensor],
) -> tuple[FittedWeights, dict[str, Any]]:
    """Re-fit ``weights`` so that ``call`` on ``inputs`` moves towards ``targets``, one step per
    ``samples_per_step`` samples; every process ends with the main process's weights. Returns what restores the
    weights of before, and the reconstructor's facts."""
    saved = FittedWeights(weights, [weight.detach().clone() for weight in weights])
    per_step = reconstructor.options.samples_per_step
    steps = [
        (batch, slice(start, start + per_step))
        for batch, hidden in enumerate(inputs)
        for start in range(0, hidden.shape[0], per_step)
    ]
    # Every process takes the same number of steps (a missing step adds nothing to the averaged gradient).
    count = int(max(all_reduce_sums([len(steps) if r == process_index() else 0 for r in range(world_size())])))

    def step_loss(step: int) -> torch.Tensor | None:
        if step >= len(steps):
            return None
        batch, rows = steps[step]
        error, values = _squared_error(call(inputs[batch], batch, rows), targets[batch][rows], token_masks[batch][rows])
        return error / max(values, 1.0)

    details = reconstructor.fit(weights, step_loss, count, _average_over_processes if is_distributed() else None)
    with torch.no_grad():
        for weight in weights:
            broadcast_(weight)  # every process keeps the main process's result, bit for bit
    return saved, details
