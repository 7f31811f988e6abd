"""Statistics of fused Mixture-of-Experts weights from the tokens routed to each expert, and writing them back.

Fused experts call their weights as slices of 3-D parameters (``F.linear(x, gate_up_proj[e])`` or
``x @ gate_up_proj[e]``), so no per-Linear hook sees them. While the experts module runs, a
:class:`~torch.overrides.TorchFunctionMode` recognises those calls by the storage of the weight argument (which
parameter, which expert) and records the input: exactly the tokens the router sent to that expert. The
grouped-matmul kernels transformers picks by default bypass such calls, so :func:`eager_experts` selects the
eager implementation for the duration of pruning and restores the user's setting after, even on error.

For an expert that must see every calibration token (``moe_calibration="all"``, or too few routed tokens), the
experts module is called once more with every token routed to that expert and zero routing weights: its output
is discarded, so the block's output does not change.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ModelStructureError
from ..models import ExpertMatrix, FusedExperts
from ..sparsity import InputStatistics
from .distributed import all_reduce_sums
from .hooks import HookSet
from .lockstep import PerBatch, sync
from .offload import locate_weight, read_parameter, write_parameter

__all__ = ["ExpertCollector", "ExpertListCalls", "ExpertStore", "MoeCalibration", "eager_experts", "routing_arguments"]

MoeCalibration = Literal["routed", "all"]

_LINEAR_CALLS = {F.linear: False, torch.matmul: True, torch.Tensor.matmul: True, torch.Tensor.__matmul__: True}
_INDEX_KEYWORDS = ("top_k_index", "topk_indices", "selected_experts", "router_indices", "topk_idx")
_WEIGHT_KEYWORDS = ("top_k_weights", "topk_weights", "routing_weights", "router_scores", "topk_weight")


@contextmanager
def eager_experts(experts: list[FusedExperts]):
    """Select transformers' eager experts forward (per-expert calls) on ``experts``' configs; restore after."""
    configs = {id(e.module.config): e.module.config for e in experts if getattr(e.module, "config", None) is not None}
    previous = {key: config._experts_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._experts_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._experts_implementation = previous[key]


class _CallInterceptor(TorchFunctionMode):
    def __init__(self, handler: Callable) -> None:
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        transposed = _LINEAR_CALLS.get(func)
        if transposed is not None and len(args) >= 2:
            replaced = self.handler(args[0], args[1], transposed)
            if replaced is not None:
                return replaced
        return func(*args, **kwargs)


class ExpertCollector(HookSet):
    """Gathers :class:`InputStatistics` per expert and parameter of every fused experts module in a block.

    Statistics of every (experts module, parameter, expert) exist from the first call on, zero where nothing was
    routed, so that processes all-reduce the same tensors in the same order.

    Args:
        experts (`list[FusedExperts]`): the block's fused experts.
        hessian (`bool`): also accumulate Gram matrices.
        calibration (`str`): ``"routed"`` (each expert's own tokens) or ``"all"`` (every token, statistics only).
        min_tokens (`int`): under ``"routed"``, experts routed fewer tokens (over all batches and processes) are
            given statistics over every token instead.
        prune (`Callable[[FusedExperts, str], None]`, *optional*): the one-pass schedule: before each experts
            call, statistics of each parameter are gathered in turn (routed and all-token calls whose outputs are
            dropped) and ``prune(fused, parameter)`` runs, so the real call computes with pruned experts.
    """

    # Per batch (micro-batches of the one-pass schedule interleave, docs/engine.md).
    _call = PerBatch()
    _mode = PerBatch()

    def __init__(
        self,
        experts: list[FusedExperts],
        hessian: bool,
        calibration: MoeCalibration,
        min_tokens: int,
        prune: Callable[[FusedExperts, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.experts = experts
        self.hessian = hessian
        self.calibration = calibration
        self.min_tokens = min_tokens
        self.stats: dict[tuple[str, str, int], InputStatistics] = {}
        self.tokens: dict[str, list[int]] = {e.name: [0] * e.num_experts for e in experts}
        self.sources: dict[str, list[str]] = {e.name: [calibration] * e.num_experts for e in experts}
        self._prune = prune
        self._count_routed = True
        # Statistics of the call itself (routed tokens) or of extra all-token calls, per experts module.
        self._record_routed = calibration == "routed" and prune is None
        self._all_tokens: dict[str, list[int]] = (
            {e.name: list(range(e.num_experts)) for e in experts} if calibration == "all" and prune is None else {}
        )
        self._fallback: dict[str, list[int]] = {}
        for fused in experts:
            self._handles.append(fused.module.register_forward_pre_hook(self._make_pre_hook(fused), with_kwargs=True))
            self._handles.append(fused.module.register_forward_hook(self._post_hook, always_call=True))

    def statistics(self, matrix: ExpertMatrix) -> InputStatistics | None:
        return self.stats.get(matrix.input_key)

    def fallback_experts(self) -> dict[str, list[int]]:
        """Experts routed fewer than ``min_tokens`` tokens in total (after :meth:`all_reduce_counts`)."""
        if self.calibration == "all":
            return {}
        found = {name: [i for i, n in enumerate(counts) if n < self.min_tokens] for name, counts in self.tokens.items()}
        return {name: experts for name, experts in found.items() if experts}

    def use_all_tokens_for(self, fallback: dict[str, list[int]]) -> None:
        """Drop the routed statistics of ``fallback`` experts; in the next passes gather theirs over every token and
        record nothing else (the counts of routed tokens stay)."""
        for fused in self.experts:
            for expert in fallback.get(fused.name, []):
                self.sources[fused.name][expert] = "all"
                for parameter in fused.parameters:
                    self.stats[(fused.name, parameter, expert)] = self._new_stats(fused, parameter, expert)
        self._record_routed = False
        self._count_routed = False
        self._all_tokens = fallback

    def all_reduce_counts(self) -> None:
        """Sum the routed-token counts over processes (once, after the statistics pass)."""
        for fused in self.experts:
            self._all_reduce_counts(fused)

    def all_reduce_statistics(self) -> None:
        """Sum the statistics over processes (once, after the last statistics pass)."""
        for key in sorted(self.stats):
            self.stats[key].all_reduce()

    def remove(self) -> None:
        super().remove()
        self._exit_mode()

    # -- hooks ----------------------------------------------------------------------------------------------

    def _make_pre_hook(self, fused: FusedExperts):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            hidden, index, _ = routing_arguments(args, kwargs)
            for expert in range(fused.num_experts):
                for parameter in fused.parameters:
                    self.stats.setdefault(
                        (fused.name, parameter, expert), self._new_stats(fused, parameter, expert, hidden.device)
                    )
            keep = self._token_keep(hidden)
            if self._count_routed:
                routed = index.reshape(-1, index.shape[-1]) if keep is None else index.reshape(-1, index.shape[-1])[keep]
                counts = torch.bincount(routed.reshape(-1).long().cpu(), minlength=fused.num_experts + 1)
                for expert in range(fused.num_experts):
                    self.tokens[fused.name][expert] += int(counts[expert])
            if self._prune is not None:
                self._prune_before_use(fused, hidden, index, keep)
            elif fused.name in self._all_tokens:
                self._run_all_tokens(fused, hidden, keep, self._all_tokens[fused.name], fused.parameters, ())
            if self._record_routed:
                self._call = _Call(fused, set(fused.parameters), set(range(fused.num_experts)), set(), _rows(index, keep, fused))
                self._enter_mode()

        return hook

    def _post_hook(self, module: nn.Module, args: tuple, output) -> None:
        self._exit_mode()
        self._call = None

    def _prune_before_use(self, fused: FusedExperts, hidden, index, keep) -> None:
        # Each sync waits for every micro-batch (one-pass in micro-batches): the routing counts and each
        # parameter's statistics are complete before they decide anything.
        sync((fused.name, "routing"), lambda: self._choose_statistics(fused))
        fallback = self._fallback[fused.name]
        routed = set(range(fused.num_experts)) - set(fallback)
        for position, parameter in enumerate(fused.parameters):
            # This parameter's output, and what comes after it, is not needed for its statistics.
            skip = set(fused.parameters[position:])
            if routed:
                self._run(fused, hidden, index, _Call(fused, {parameter}, routed, skip, _rows(index, keep, fused)))
            if fallback:
                self._run_all_tokens(fused, hidden, keep, fallback, (parameter,), skip)
            sync((fused.name, parameter), lambda parameter=parameter: self._prune_parameter(fused, parameter))

    def _choose_statistics(self, fused: FusedExperts) -> None:
        """Experts below ``min_tokens`` routed tokens (every one under ``"all"``) take statistics over every token."""
        self._all_reduce_counts(fused)
        counts = self.tokens[fused.name]
        everything = self.calibration == "all"
        self._fallback[fused.name] = [e for e in range(fused.num_experts) if everything or counts[e] < self.min_tokens]
        for expert in self._fallback[fused.name]:
            self.sources[fused.name][expert] = "all"

    def _prune_parameter(self, fused: FusedExperts, parameter: str) -> None:
        for expert in range(fused.num_experts):
            self.stats[(fused.name, parameter, expert)].all_reduce()
        self._prune(fused, parameter)

    def _run_all_tokens(self, fused, hidden, keep, experts: list[int], parameters, skip) -> None:
        tokens = hidden.reshape(-1, hidden.shape[-1])
        tokens = tokens if keep is None else tokens[keep]
        index = torch.tensor(experts, dtype=torch.long, device=tokens.device).expand(tokens.shape[0], len(experts))
        self._run(fused, tokens, index.contiguous(), _Call(fused, set(parameters), set(experts), set(skip), None))

    def _run(self, fused: FusedExperts, hidden: torch.Tensor, index: torch.Tensor, call: _Call) -> None:
        """Call ``fused`` with routing ``index`` and zero routing weights for statistics; the output is dropped."""
        weights = torch.zeros(index.shape, dtype=hidden.dtype, device=hidden.device)
        saved_call, saved_mode = self._call, self._mode
        self._call, self._mode = call, None
        self._enter_mode()
        try:
            with torch.no_grad():
                fused.module.forward(hidden, index, weights)  # .forward: our own hooks stay out of it
        finally:
            self._exit_mode()
            self._call, self._mode = saved_call, saved_mode

    def _all_reduce_counts(self, fused: FusedExperts) -> None:
        self.tokens[fused.name] = [int(v) for v in all_reduce_sums([float(c) for c in self.tokens[fused.name]])]

    def _new_stats(self, fused: FusedExperts, parameter: str, expert: int, device=None) -> InputStatistics:
        value = getattr(fused.module, parameter)
        in_features = value.shape[1] if fused.transposed else value.shape[2]
        if device is None:
            device = self.stats[(fused.name, parameter, expert)].squared_sum.device
        return InputStatistics(in_features, self.hessian, device=device)

    def _token_keep(self, hidden: torch.Tensor) -> torch.Tensor | None:
        mask = self.token_mask
        tokens = hidden.reshape(-1, hidden.shape[-1]).shape[0]
        if mask is None or mask.numel() != tokens or bool(mask.all()):
            return None
        return mask.reshape(-1).to(hidden.device)

    def _enter_mode(self) -> None:
        if self._mode is None:
            self._mode = _CallInterceptor(self._on_call)
            self._mode.__enter__()

    def _exit_mode(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)

    def _on_call(self, x: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor | None:
        call = self._call
        if call is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return None
        found = _which_expert(call.fused, weight)
        if found is None:
            return None
        parameter, expert = found
        if parameter in call.parameters and expert in call.experts:
            tokens = x.reshape(-1, x.shape[-1])
            if call.rows is not None:
                keep = call.rows[expert]
                if keep.numel() != tokens.shape[0]:
                    raise ModelStructureError(
                        f"{type(call.fused.module).__name__} gathers the tokens of expert {expert} in an order "
                        "hf_calibprune cannot match to padding; calibrate with samples of equal length."
                    )
                tokens = tokens[keep]
            self.stats[(call.fused.name, parameter, expert)].add(tokens)
        if parameter in call.skip:
            out_features = weight.shape[-1] if transposed else weight.shape[0]
            return x.new_zeros(*x.shape[:-1], out_features)
        return None


@dataclass
class _Call:
    """What one experts call records: which parameters and experts, which outputs it skips, which rows are real."""

    fused: FusedExperts
    parameters: set[str]
    experts: set[int]
    skip: set[str]
    rows: dict[int, torch.Tensor] | None


def _rows(index: torch.Tensor, keep: torch.Tensor | None, fused: FusedExperts) -> dict[int, torch.Tensor] | None:
    """Which rows of each expert's input are real tokens, in the order transformers' eager forward gathers them
    (``torch.where`` over ``one_hot(index).permute(2, 1, 0)[e]``: by top-k slot, then by token)."""
    if keep is None:
        return None
    index = index.reshape(-1, index.shape[-1])
    return {expert: keep[torch.where((index == expert).t())[1]] for expert in range(fused.num_experts)}


def routing_arguments(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(hidden_states, expert indices, routing weights)`` of a call of a fused experts module (weights ``None``
    where it was not given)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    index = args[1] if len(args) > 1 else next((kwargs[k] for k in _INDEX_KEYWORDS if k in kwargs), None)
    weights = args[2] if len(args) > 2 else next((kwargs[k] for k in _WEIGHT_KEYWORDS if k in kwargs), None)
    if hidden is None or index is None:
        raise ModelStructureError(
            "a fused experts module was called without (hidden_states, expert indices, routing weights); "
            "hf_calibprune cannot follow its routing."
        )
    return hidden, index, weights


def _which_expert(fused: FusedExperts, weight: torch.Tensor) -> tuple[str, int] | None:
    pointer = weight.untyped_storage().data_ptr()
    for parameter in fused.parameters:
        value = getattr(fused.module, parameter)
        if value.device.type == "meta" or value.untyped_storage().data_ptr() != pointer:
            continue
        expert, remainder = divmod(weight.storage_offset() - value.storage_offset(), value.stride(0))
        if 0 <= expert < value.shape[0] and remainder == 0:
            return parameter, expert
    return None


class ExpertStore:
    """Reads and writes expert matrices of one block, wherever accelerate keeps the fused parameters.

    A materialized parameter is written in place (the running forward sees the pruned expert at once); the
    value of an offloaded one is read once, updated matrix by matrix and written back by :meth:`flush`.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self._offloaded: dict[tuple[str, str], torch.Tensor] = {}

    def _module(self, matrix: ExpertMatrix) -> nn.Module:
        return self.block.get_submodule(matrix.experts)

    def read(self, matrix: ExpertMatrix) -> torch.Tensor:
        """The matrix as ``[out, in]`` (a view: do not modify it)."""
        module = self._module(matrix)
        key = (matrix.experts, matrix.parameter)
        if key in self._offloaded:
            return matrix.view(self._offloaded[key])
        value = getattr(module, matrix.parameter)
        if value.device.type != "meta":
            return matrix.view(value.detach())
        return matrix.view(self._offloaded_value(matrix))

    def write(self, matrix: ExpertMatrix, weight: torch.Tensor) -> torch.Tensor:
        """Write ``weight`` (``[out, in]``) into the parameter; returns the value as stored."""
        module = self._module(matrix)
        value = getattr(module, matrix.parameter)
        stored = None
        with torch.no_grad():
            if value.device.type != "meta":
                target = matrix.view(value.data)
                target.copy_(weight.to(device=target.device, dtype=target.dtype))
                stored = target
            offloaded = locate_weight(module, root=self.block, name=matrix.experts, parameter=matrix.parameter).storage != "memory"
            if offloaded or value.device.type == "meta":
                target = matrix.view(self._offloaded_value(matrix))
                target.copy_(weight.to(device=target.device, dtype=target.dtype))
                stored = target if stored is None else stored
        return stored

    def _offloaded_value(self, matrix: ExpertMatrix) -> torch.Tensor:
        key = (matrix.experts, matrix.parameter)
        if key not in self._offloaded:
            module = self._module(matrix)
            self._offloaded[key] = read_parameter(
                module, matrix.parameter, root=self.block, name=matrix.experts
            ).detach().to("cpu", copy=True)
        return self._offloaded[key]

    def flush(self) -> None:
        """Write every offloaded parameter changed since the last flush back to accelerate's offload map."""
        for (experts, parameter), value in self._offloaded.items():
            module = self.block.get_submodule(experts)
            write_parameter(module, parameter, value, root=self.block, name=experts)
        self._offloaded.clear()


class ExpertListCalls(HookSet):
    """Counts the tokens routed to each expert of ``nn.ModuleList`` Mixture-of-Experts modules, and runs chosen
    experts on every non-padding token of the module's input for statistics only (the experts' Linear hooks, a
    ``StatisticsCollector``, record those calls; their outputs are dropped).

    Routed counts are rows each expert is called with; padding tokens routed to an expert count too (the module
    gathers them in its own order).

    Args:
        block (`nn.Module`): the decoder block.
        runs (`dict[str, list[int]]`): MoE module path inside the block → experts to run before that module runs.
        collector (`StatisticsCollector`, *optional*): unpaused around these calls only, so that it records nothing
            of the routed calls.
        keep_inputs (`bool`): keep each module's tokens for :meth:`run` after the pass.
    """

    def __init__(self, block: nn.Module, runs: dict[str, list[int]], collector=None, keep_inputs: bool = False) -> None:
        super().__init__()
        self.block = block
        self.runs = runs
        self.collector = collector
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.tokens: dict[str, list[int]] = {name: [0] * len(block.get_submodule(name).experts) for name in runs}
        self._keep_inputs = keep_inputs
        self._running = False
        for name in runs:
            module = block.get_submodule(name)
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))
            for expert, expert_module in enumerate(module.experts):
                self._handles.append(expert_module.register_forward_pre_hook(self._make_counter(name, expert)))

    def _make_counter(self, name: str, expert: int):
        def hook(module: nn.Module, args: tuple) -> None:
            if not self._running:
                self.tokens[name][expert] += args[0].reshape(-1, args[0].shape[-1]).shape[0]

        return hook

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            hidden = args[0]
            tokens = hidden.reshape(-1, hidden.shape[-1])
            mask = self.token_mask
            if mask is not None and mask.numel() == tokens.shape[0]:
                tokens = tokens[mask.reshape(-1).to(tokens.device)]
            if self._keep_inputs:
                self.inputs.setdefault(name, []).append(tokens)
            self.run(name, tokens, self.runs[name])

        return hook

    def run(self, name: str, tokens: torch.Tensor, experts: list[int]) -> None:
        """Call ``experts`` of MoE module ``name`` on ``tokens``; outputs are dropped."""
        if not experts:
            return
        module = self.block.get_submodule(name)
        paused = self.collector.paused if self.collector is not None else None
        self._running = True
        try:
            if self.collector is not None:
                self.collector.paused = False
            with torch.no_grad():
                for expert in experts:
                    module.experts[expert](tokens)
        finally:
            self._running = False
            if self.collector is not None:
                self.collector.paused = paused

    def all_reduce_counts(self) -> None:
        """Sum the routed counts over processes."""
        for name in self.tokens:
            self.tokens[name] = [int(v) for v in all_reduce_sums([float(c) for c in self.tokens[name]])]
