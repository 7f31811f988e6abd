"""Capture the hidden states entering the first decoder block and every argument the model passes each block.

The decoder blocks are wrapped, for one forward pass per batch, by recorders that note their arguments and
pass the hidden states through untouched; the last one stops the pass. Nothing is named per architecture:
attention masks (including per-block sliding-window masks), position ids, rotary embeddings and cache
positions are whatever the model itself computed and passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import DecoderLayout

__all__ = ["BlockCall", "CapturedInputs", "capture_block_inputs", "block_hidden_output"]


class _StopForward(Exception):
    """Raised by the last recorder: nothing after the decoder blocks needs to run."""


@dataclass(frozen=True)
class BlockCall:
    """Arguments for one block call besides the hidden states."""

    args: tuple
    kwargs: dict[str, Any]


@dataclass
class CapturedInputs:
    """Calibration inputs of the first block, batch by batch.

    Args:
        hidden (`list[torch.Tensor]`): hidden states per batch, replaced by each block's outputs as pruning walks on.
        token_masks (`list[torch.Tensor]`): ``[batch, seq_len]`` bool per batch, ``False`` on padding.
        calls (`list[list[BlockCall]]`): ``calls[batch][block]``; identical calls share one object.
        tuple_output (`bool`): whether blocks return a tuple whose first item is the hidden states.
        reference (`list[torch.Tensor]`, *optional*): the dense model's hidden states per batch at the same block,
            kept beside ``hidden`` for block-wise reconstruction; ``None`` until the first block is reconstructed.
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    token_masks: list[torch.Tensor] = field(default_factory=list)
    calls: list[list[BlockCall]] = field(default_factory=list)
    tuple_output: bool | None = None
    reference: list[torch.Tensor] | None = None


class _Recorder(nn.Module):
    """Stands in for decoder block ``index`` during capture; attribute reads fall through to the block."""

    def __init__(self, block: nn.Module, index: int, sink: _Sink) -> None:
        super().__init__()
        self.block = block
        self.index = index
        self.sink = sink

    def forward(self, *args, **kwargs):
        return self.sink.record(self.index, self.block, args, kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


class _Sink:
    def __init__(self, captured: CapturedInputs, num_blocks: int, store_device: torch.device | None) -> None:
        self.captured = captured
        self.num_blocks = num_blocks
        self.store_device = store_device
        self.batch_calls: list[BlockCall] = []
        self._unique: dict[tuple, BlockCall] = {}

    def record(self, index: int, block: nn.Module, args: tuple, kwargs: dict[str, Any]):
        kwargs = dict(kwargs)
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        key = tuple(id(a) for a in rest) + tuple((k, id(v)) for k, v in sorted(kwargs.items()))
        call = self._unique.setdefault(key, BlockCall(rest, kwargs))
        self.batch_calls.append(call)
        if index == 0:
            self.captured.hidden.append(hidden if self.store_device is None else hidden.to(self.store_device))
            if self.captured.tuple_output is None:
                with torch.no_grad():
                    self.captured.tuple_output = isinstance(block(hidden, *rest, **kwargs), tuple)
        if index == self.num_blocks - 1:
            raise _StopForward
        return (hidden,) if self.captured.tuple_output else hidden


def _input_device(model: nn.Module) -> torch.device:
    weight = model.get_input_embeddings().weight
    if weight.device.type != "meta":
        return weight.device
    hook = getattr(model.get_input_embeddings(), "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def capture_block_inputs(
    model: nn.Module,
    layout: DecoderLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int,
    store_device: torch.device | str | None = None,
) -> CapturedInputs:
    """Run the model up to its first decoder block for every batch and record what each block receives.

    The block list is restored in ``finally``, even if the model raises.
    """
    captured = CapturedInputs()
    blocks = layout.blocks
    originals = list(blocks)
    sink = _Sink(captured, len(blocks), torch.device(store_device) if store_device is not None else None)
    device = _input_device(model)
    try:
        for index, block in enumerate(originals):
            blocks[index] = _Recorder(block, index, sink)
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            sink.batch_calls = []
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
            captured.calls.append(sink.batch_calls)
            captured.token_masks.append(attention_mask[start : start + batch_size].bool())
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block
    return captured


def block_hidden_output(output: Any) -> torch.Tensor:
    """The hidden states a block returned, whether bare or first in a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output
