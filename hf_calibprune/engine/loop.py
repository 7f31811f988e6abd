"""The layer-by-layer pruning loop.

For each decoder block: gather input statistics of its Linears over all calibration samples, prune
each Linear, then run the block again with pruned weights to produce the next block's inputs
(``"sequential"``, as the Wanda and SparseGPT reference code). ``"one-pass"`` instead runs each block
once over all samples as a single batch, pruning every Linear just before it computes, so later
sub-layers see the outputs of already-pruned ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import NumericalError
from ..methods import PruningMethod
from ..methods.wanda import wanda_scores
from ..models import DecoderLayout, find_decoder_layout, find_prunable_linears, get_weight, set_weight
from ..records import BlockRecord, LayerRecord
from ..sparsity import InputStatistics, LayerSparsity, SparsityPattern, outlier_ratio
from .capture import CapturedInputs, block_hidden_output, capture_block_inputs
from .hooks import ErrorMeter, StatisticsCollector, hessian_error

__all__ = ["EngineOptions", "LayerwiseEngine", "Schedule"]

logger = logging.getLogger(__name__)

Schedule = Literal["sequential", "one-pass"]


@dataclass(frozen=True)
class EngineOptions:
    """How the loop runs (not what it prunes).

    Args:
        batch_size (`int`, *optional*, defaults to 8): calibration samples per block call (``"sequential"``).
        schedule (`str`, *optional*, defaults to `"sequential"`): ``"sequential"`` or ``"one-pass"``.
        measure_error (`bool`, *optional*, defaults to `True`): record each Linear's reconstruction error.
        activation_device (`str`, *optional*): where calibration activations wait between blocks
            (``"cpu"`` keeps them off the accelerator); ``None`` leaves them where they were computed.
        ignore (`tuple[str, ...]`, *optional*): Linears whose name contains any of these stay dense.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar over blocks.
    """

    batch_size: int = 8
    schedule: Schedule = "sequential"
    measure_error: bool = True
    activation_device: str | None = None
    ignore: tuple[str, ...] = ()
    progress: bool = True


def _block_device(block: nn.Module) -> torch.device | None:
    """The device block parameters live on, or ``None`` when accelerate's hooks place them."""
    if getattr(block, "_hf_hook", None) is not None:
        return None
    parameter = next(block.parameters(), None)
    return None if parameter is None or parameter.device.type == "meta" else parameter.device


class LayerwiseEngine:
    """Walks the decoder blocks of ``model`` with captured calibration activations.

    Args:
        model (`nn.Module`): a decoder-only transformers model, pruned in place.
        options (`EngineOptions`): loop settings.
    """

    def __init__(self, model: nn.Module, options: EngineOptions) -> None:
        self.model = model
        self.options = options
        self.layout: DecoderLayout = find_decoder_layout(model)

    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CapturedInputs:
        """Record the first block's inputs for every calibration sample."""
        batch_size = input_ids.shape[0] if self.options.schedule == "one-pass" else self.options.batch_size
        return capture_block_inputs(
            self.model, self.layout, input_ids, attention_mask, batch_size, self.options.activation_device
        )

    def outlier_ratios(self, captured: CapturedInputs, threshold: float) -> dict[str, float]:
        """OWL's outlier ratio of each block's Wanda scores, propagating dense activations."""
        ratios: dict[str, float] = {}
        for index, block in enumerate(self._progress(self.layout.blocks, "Measuring outliers")):
            linears = find_prunable_linears(block, self.options.ignore)
            collector = StatisticsCollector(linears, hessian=False)
            try:
                self._run_block(block, index, captured, collector, keep_outputs=True)
            finally:
                collector.remove()
            scores = torch.cat(
                [wanda_scores(get_weight(m).float(), collector.stats[n].norms.to(get_weight(m).device)).flatten()
                 for n, m in linears.items() if n in collector.stats]
            )
            ratios[self.layout.block_name(index)] = outlier_ratio(scores, threshold)
        return ratios

    def prune(
        self,
        method: PruningMethod,
        pattern: SparsityPattern,
        layer_sparsity: LayerSparsity,
        captured: CapturedInputs | None,
    ) -> tuple[list[LayerRecord], list[BlockRecord]]:
        """Prune every block; ``captured`` may be ``None`` only for methods that need no statistics."""
        layers: list[LayerRecord] = []
        blocks: list[BlockRecord] = []
        for index, block in enumerate(self._progress(self.layout.blocks, "Pruning blocks")):
            started = time.perf_counter()
            name = self.layout.block_name(index)
            sparsity = layer_sparsity[name]
            linears = find_prunable_linears(block, self.options.ignore)
            if captured is None:
                records = [self._prune_linear(method, index, n, m, None, sparsity, pattern)[0] for n, m in linears.items()]
            elif self.options.schedule == "one-pass":
                records = self._prune_block_one_pass(method, index, block, linears, captured, sparsity, pattern)
            else:
                records = self._prune_block_sequential(method, index, block, linears, captured, sparsity, pattern)
            layers.extend(records)
            blocks.append(_block_record(index, name, sparsity, records, time.perf_counter() - started))
        return layers, blocks

    def _prune_block_sequential(self, method, index, block, linears, captured, sparsity, pattern) -> list[LayerRecord]:
        collector = StatisticsCollector(linears, hessian=method.needs == "hessian")
        try:
            self._run_block(block, index, captured, collector, keep_outputs=False)
        finally:
            collector.remove()
        _all_reduce(collector.stats)
        records, removed = [], {}
        for name, module in linears.items():
            record, delta = self._prune_linear(method, index, name, module, collector.stats.get(name), sparsity, pattern)
            records.append(record)
            if record.reconstruction_error is None and delta is not None:
                removed[name] = delta
        meter = ErrorMeter(linears, removed) if removed else None
        try:
            self._run_block(block, index, captured, meter, keep_outputs=True)
        finally:
            if meter is not None:
                meter.remove()
        if meter is not None:
            errors = meter.result()
            for name, record in zip(linears, records):
                if name in errors:
                    record.reconstruction_error = errors[name]
        return records

    def _prune_block_one_pass(self, method, index, block, linears, captured, sparsity, pattern) -> list[LayerRecord]:
        records: dict[str, LayerRecord] = {}

        def prune_before_use(name: str, module: nn.Module, stats: InputStatistics, x: torch.Tensor) -> None:
            if name in records:
                return
            stats.all_reduce()
            weight = get_weight(module).detach().to(torch.float32, copy=True)
            record, delta = self._prune_linear(method, index, name, module, stats, sparsity, pattern)
            if record.reconstruction_error is None and delta is not None:
                tokens = x.reshape(-1, x.shape[-1]).float()
                reference = (tokens @ weight.to(tokens.device).t()).square().sum()
                error = (tokens @ delta.to(tokens.device).t()).square().sum()
                record.reconstruction_error = float(error / reference) if reference else 0.0
            records[name] = record

        collector = StatisticsCollector(linears, hessian=method.needs == "hessian", on_input=prune_before_use)
        try:
            self._run_block(block, index, captured, collector, keep_outputs=True)
        finally:
            collector.remove()
        missing = [name for name in linears if name not in records]
        if missing:
            raise NumericalError(f"block {self.layout.block_name(index)}: Linears {missing} received no input.")
        return [records[name] for name in linears]

    def _prune_linear(
        self,
        method: PruningMethod,
        index: int,
        name: str,
        module: nn.Module,
        stats: InputStatistics | None,
        sparsity: float,
        pattern: SparsityPattern,
    ) -> tuple[LayerRecord, torch.Tensor | None]:
        full_name = f"{self.layout.block_name(index)}.{name}"
        started = time.perf_counter()
        weight = get_weight(module).detach().to(torch.float32, copy=True)
        if not torch.isfinite(weight).all():
            raise NumericalError(f"{full_name} has NaN or inf weights before pruning; check the model checkpoint.")
        if stats is not None:
            stats = _on_device(stats, weight.device)
        try:
            result = method.prune(weight, stats, sparsity, pattern)
        except NumericalError as error:
            raise NumericalError(f"{full_name}: {error}") from error
        set_weight(module, result.weight)
        written = get_weight(module).detach()
        delta = weight - written.float() if self.options.measure_error and stats is not None else None
        error = None
        if delta is not None and stats.gram is not None:
            error = hessian_error(delta, weight, stats.gram)
        record = LayerRecord(
            name=full_name,
            block=index,
            shape=list(written.shape),
            requested_sparsity=sparsity if pattern.is_unstructured else float(pattern.implied_sparsity),
            measured_sparsity=float((written == 0).float().mean()),
            reconstruction_error=error,
            seconds=time.perf_counter() - started,
            info=result.info,
        )
        return record, delta

    def _run_block(self, block, index, captured, hooks, keep_outputs: bool) -> None:
        device = _block_device(block)
        with torch.no_grad():
            for batch, hidden in enumerate(captured.hidden):
                call = captured.calls[batch][index]
                if hooks is not None:
                    hooks.token_mask = captured.token_masks[batch]
                inputs = hidden if device is None else hidden.to(device)
                output = block_hidden_output(block(inputs, *call.args, **call.kwargs))
                if isinstance(hooks, StatisticsCollector):
                    hooks.end_batch()
                if keep_outputs:
                    if not torch.isfinite(output).all():
                        raise NumericalError(
                            f"block {self.layout.block_name(index)} produced NaN or inf activations; for fp16 "
                            "models load in bfloat16 or float32."
                        )
                    captured.hidden[batch] = output.to(hidden.device)

    def _progress(self, blocks: nn.ModuleList, description: str):
        return tqdm(blocks, desc=description, unit="block", disable=not self.options.progress)


def _on_device(stats: InputStatistics, device: torch.device) -> InputStatistics:
    if stats.squared_sum.device == device:
        return stats
    moved = InputStatistics(stats.in_features, stats.gram is not None, device)
    moved.merge(stats)
    return moved


def _all_reduce(stats: dict[str, InputStatistics]) -> None:
    for unique in {id(s): s for s in stats.values()}.values():
        unique.all_reduce()


def _block_record(index, name, sparsity, records, seconds) -> BlockRecord:
    total = sum(r.shape[0] * r.shape[1] for r in records)
    zeros = sum(r.measured_sparsity * r.shape[0] * r.shape[1] for r in records)
    requested = records[0].requested_sparsity if records else sparsity
    return BlockRecord(index, name, requested, zeros / total if total else 0.0, seconds)
