"""Forward hooks on a block's Linears: input statistics (shared by Linears reading the same tensor) and
reconstruction error of pruned weights."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..sparsity import InputStatistics, quadratic_trace
from .lockstep import PerBatch
from .offload import read_parameter

__all__ = ["AllInputsGathered", "HookSet", "StatisticsCollector", "ErrorMeter", "ERROR_TOKEN_BUDGET", "hessian_error"]

#: Tokens per block pass on which :class:`ErrorMeter` measures methods that gather no Gram matrix.
ERROR_TOKEN_BUDGET = 1024


def _tokens(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` as ``[tokens, features]`` without padding positions."""
    flat = x.reshape(-1, x.shape[-1])
    if token_mask is None or token_mask.numel() != flat.shape[0]:
        return flat
    keep = token_mask.reshape(-1).to(flat.device)
    return flat if bool(keep.all()) else flat[keep]


class HookSet:
    """Hooks registered on a block's modules for one pass, removed together; the engine sets ``token_mask`` to each
    batch's padding mask before the batch runs."""

    #: ``[batch, seq_len]`` bool of the running (micro-)batch, ``False`` on padding.
    token_mask = PerBatch()

    def __init__(self) -> None:
        self._handles: list = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class AllInputsGathered(Exception):
    """Raised by a :class:`StatisticsCollector` with ``stop_early`` once the block's last Linear call has its input."""


class StatisticsCollector(HookSet):
    """Gathers :class:`InputStatistics` for each Linear of a block while the block runs.

    Linears fed the very same tensor (q/k/v, gate/up) share one statistic, found from the tensors
    themselves rather than from layer names. ``on_input(name, module, stats)``, if given, runs before each
    Linear computes (the one-pass schedule prunes there). With ``stop_early``, from the second batch on, the
    hook of the block's last Linear call raises :class:`AllInputsGathered` instead of letting it compute: a pass
    that only gathers statistics needs nothing after that (for a Llama block, the down projection and the
    residual add). The first batch runs whole and records the order of Linear calls (:attr:`call_order`); a batch
    whose calls stray from that order runs whole too. ``expected_calls``, the call order of an earlier block of
    the same structure, lets the first batch stop early as well; it is only used when it names every Linear.
    """

    # Per batch (micro-batches of the one-pass schedule interleave, docs/engine.md).
    _calls = PerBatch(list)
    _last_input = PerBatch()
    _last_stats = PerBatch()

    def __init__(
        self,
        linears: dict[str, nn.Module],
        hessian: bool,
        on_input: Callable[[str, nn.Module, InputStatistics, torch.Tensor], None] | None = None,
        stop_early: bool = False,
        expected_calls: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.hessian = hessian
        self.stats: dict[str, InputStatistics] = {}
        self._on_input = on_input
        self._stop_early = stop_early
        self._first_batch_calls: list[str] | None = None
        self._expected_calls = expected_calls if expected_calls and set(expected_calls) >= set(linears) else None
        #: While ``True`` the hooks record nothing (an :class:`ExpertListCalls` unpauses them around its own calls).
        self.paused = False
        for name, module in linears.items():
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))

    def end_batch(self) -> None:
        self._last_input = None
        self._last_stats = None
        if self._first_batch_calls is None:
            self._first_batch_calls = self._calls
        self._calls = []

    @property
    def call_order(self) -> list[str] | None:
        """The Linear calls of the first batch, in order (``None`` before a batch has ended)."""
        return self._first_batch_calls

    def groups(self) -> list[list[str]]:
        """Names of Linears sharing one statistic."""
        grouped: dict[int, list[str]] = {}
        for name, stats in self.stats.items():
            grouped.setdefault(id(stats), []).append(name)
        return list(grouped.values())

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if self.paused:
                return
            x = args[0]
            if x is self._last_input:
                self.stats.setdefault(name, self._last_stats)
            else:
                stats = self.stats.get(name)
                if stats is None:
                    stats = InputStatistics(x.shape[-1], self.hessian, device=x.device)
                    self.stats[name] = stats
                stats.add(_tokens(x, self.token_mask))
                self._last_input, self._last_stats = x, stats
            if self._on_input is not None:
                self._on_input(name, module, self.stats[name], x)
            self._calls.append(name)
            if self._stop_early and self._calls == (self._first_batch_calls or self._expected_calls):
                raise AllInputsGathered

        return hook


class ErrorMeter(HookSet):
    """Measures ``‖WX − ŴX‖² / ‖WX‖²`` of pruned Linears as the block runs with pruned weights.

    ``removed[name]`` is ``W − Ŵ`` as ``[out, in]``, filled any time before that Linear runs; the Linear's own
    output gives ``ŴX``, so each measured token costs one extra product with ``W − Ŵ``. To keep that cost small
    next to the pass itself, only the first ``token_budget`` non-padding tokens of a pass are measured. ``root``
    is the block ``linears`` are named in, where accelerate's hooks may keep an offloaded bias.
    """

    def __init__(
        self,
        linears: dict[str, nn.Module],
        removed: dict[str, torch.Tensor],
        token_budget: int = ERROR_TOKEN_BUDGET,
        root: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.root = root
        self.removed = removed
        self.token_budget = token_budget
        self.error = {name: 0.0 for name in linears}
        self.reference = {name: 0.0 for name in linears}
        self.tokens = {name: 0 for name in linears}
        for name, module in linears.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def result(self) -> dict[str, float]:
        return {
            name: self.error[name] / self.reference[name] if self.reference[name] else 0.0
            for name in self.error
            if name in self.removed
        }

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            room = self.token_budget - self.tokens[name]
            if name not in self.removed or room <= 0:
                return
            x = _tokens(args[0], self.token_mask)[:room].float()
            self.tokens[name] += x.shape[0]
            delta = x @ self.removed[name].to(x.device).t()
            pruned = _tokens(output, self.token_mask)[:room].float()
            bias = getattr(module, "bias", None)
            if bias is not None:
                if bias.device.type == "meta":  # offloaded: accelerate's hook put it back before this hook runs
                    bias = read_parameter(module, "bias", root=self.root, name=name)
                pruned = pruned - bias.to(pruned.device).float()
            self.error[name] += float(delta.square().sum())
            self.reference[name] += float((pruned + delta).square().sum())

        return hook


def hessian_error(removed: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``: the relative reconstruction error from the Gram matrix, no data pass."""
    reference = float(quadratic_trace(weight.to(gram.device, torch.float32), gram))
    return float(quadratic_trace(removed.to(gram.device, torch.float32), gram)) / reference if reference else 0.0

