"""The layer-by-layer pruning loop.

For each decoder block: gather input statistics of its Linears over all calibration samples, prune
each Linear, then run the block again with pruned weights to produce the next block's inputs
(``"sequential"``, as the Wanda and SparseGPT reference code). ``"one-pass"`` instead runs each block
once, pruning every Linear just before it computes from the inputs of all samples, so later sub-layers see the
outputs of already-pruned ones; its micro-batches meet before each Linear (:mod:`.lockstep`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from accelerate.utils import send_to_device
from torch import nn
from tqdm.auto import tqdm

from ..errors import NumericalError
from ..methods import PruningMethod
from ..methods.wanda import wanda_scores
from ..models import DecoderLayout, ExpertMatrix, find_decoder_layout, find_fused_experts, find_moe_blocks, find_prunable_linears
from ..refinement import MaskRefiner
from ..reconstruction import BlockReconstructor, WeightReconstructor
from ..records import BlockRecord, LayerRecord
from ..sparsity import InputStatistics, LayerSparsity, SparsityPattern, count_zeros, outlier_ratio
from .block_fit import block_error, fit_block, sample_rows, trainable_weights
from .capture import CapturedInputs, block_hidden_output, capture_block_inputs
from .checkpointing import BlockCheckpoint, fused_parameters
from .distributed import all_reduce_sums, broadcast_, resolve_device
from .experts import ExpertCollector, ExpertListCalls, ExpertStore, MoeCalibration, eager_experts
from .hooks import AllInputsGathered, ErrorMeter, StatisticsCollector, hessian_error
from .lockstep import Lockstep, sync
from .offload import read_weight, write_weight

__all__ = ["EngineOptions", "LayerwiseEngine", "Schedule"]

logger = logging.getLogger(__name__)

Schedule = Literal["sequential", "one-pass"]


@dataclass(frozen=True)
class EngineOptions:
    """How the loop runs (not what it prunes).

    Args:
        batch_size (`int`, *optional*, defaults to 8): calibration samples per block call.
        schedule (`str`, *optional*, defaults to `"sequential"`): ``"sequential"`` or ``"one-pass"``.
        measure_error (`bool`, *optional*, defaults to `True`): record each Linear's reconstruction error.
        activation_device (`str`, *optional*): where calibration activations wait between blocks
            (``"cpu"`` keeps them off the accelerator); ``None`` leaves them where they were computed.
        ignore (`tuple[str, ...]`, *optional*): Linears whose name contains any of these stay dense.
        refiner (`MaskRefiner`, *optional*): improves each method's mask using the Gram matrix.
        reconstructor (`Reconstructor`, *optional*): re-fits the kept weights after method and refiner: each
            Linear's (a :class:`WeightReconstructor`) or, in the sequential schedule, each block's together
            (a :class:`BlockReconstructor`).
        progress (`bool`, *optional*, defaults to `True`): show a progress bar over blocks.
        execution_device (`str`, *optional*): move each block to this device (``"cuda"``) for its passes and
            back to where it was afterwards, so the accelerator holds one block at a time. Blocks placed by
            accelerate hooks (a ``device_map``) run where their hooks say instead.
        moe_calibration (`str`, *optional*, defaults to `"routed"`): statistics of each expert from the tokens
            routed to it (``"routed"``) or from every calibration token (``"all"``).
        min_expert_tokens (`int`, *optional*, defaults to 128): under ``"routed"``, an expert routed fewer tokens
            is given statistics over every token instead.
    """

    batch_size: int = 8
    schedule: Schedule = "sequential"
    measure_error: bool = True
    activation_device: str | None = None
    ignore: tuple[str, ...] = ()
    refiner: MaskRefiner | None = None
    reconstructor: WeightReconstructor | BlockReconstructor | None = None
    progress: bool = True
    execution_device: str | None = None
    moe_calibration: MoeCalibration = "routed"
    min_expert_tokens: int = 128


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
        # The Linear call order of each block structure seen (block class, Linear names), for stopping statistics
        # passes early from their first batch on.
        self._call_orders: dict[tuple[type, tuple[str, ...]], list[str]] = {}

    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CapturedInputs:
        """Record the first block's inputs for every calibration sample."""
        batch_size = input_ids.shape[0] if self._one_batch() else self.options.batch_size
        return capture_block_inputs(
            self.model, self.layout, input_ids, attention_mask, batch_size, self.options.activation_device
        )

    def _one_batch(self) -> bool:
        """Whether the one-pass schedule runs all samples as one batch, because its micro-batches could not meet
        before every Linear: ``nn.ModuleList`` experts are called only by the batches routed to them, and
        accelerate's hooks (device maps, offload) move a module's weights away after each call."""
        if self.options.schedule != "one-pass":
            return False
        blocks = self.layout.blocks
        return any(hasattr(m, "_hf_hook") for block in blocks for m in block.modules()) or any(
            moe.fused is None for block in blocks for moe in find_moe_blocks(block)
        )

    def forward_blocks(self, captured: CapturedInputs) -> None:
        """Run every block once over ``captured`` without pruning, as :meth:`prune` runs them (a timing baseline)."""
        for index, block in enumerate(self.layout.blocks):
            self._run_block(block, index, captured, None, keep_outputs=True)

    def outlier_ratios(self, captured: CapturedInputs, threshold: float) -> dict[str, float]:
        """OWL's outlier ratio of each block's Wanda scores (experts' from their routed tokens), propagating dense
        activations."""
        ratios: dict[str, float] = {}
        with self._eager_experts():
            for index, block in enumerate(self._progress(self.layout.blocks, "Measuring outliers")):
                linears = find_prunable_linears(block, self.options.ignore)
                collector = StatisticsCollector(linears, hessian=False)
                experts = self._expert_collector(block, hessian=False)
                with self._placed(block):
                    try:
                        self._run_block(block, index, captured, (collector, experts), keep_outputs=True)
                    finally:
                        collector.remove()
                        if experts is not None:
                            experts.remove()
                    _all_reduce(collector.stats)
                    weights = [
                        (read_weight(m, root=block, name=n), collector.stats[n]) for n, m in linears.items() if n in collector.stats
                    ]
                    if experts is not None:
                        experts.all_reduce_statistics()
                        store = ExpertStore(block)
                        weights += [(store.read(m), experts.statistics(m)) for m in self._expert_matrices(block)]
                    scores = [
                        wanda_scores(weight.to(stats.norms.device, torch.float32), stats.norms).flatten()
                        for weight, stats in weights
                        if stats.num_tokens
                    ]
                ratios[self.layout.block_name(index)] = outlier_ratio(torch.cat(scores), threshold)
        return ratios

    def _eager_experts(self):
        return eager_experts([f for block in self.layout.blocks for f in find_fused_experts(block)])

    def prune(
        self,
        method: PruningMethod,
        pattern: SparsityPattern,
        layer_sparsity: LayerSparsity,
        captured: CapturedInputs | None,
        checkpoint: BlockCheckpoint | None = None,
    ) -> tuple[list[LayerRecord], list[BlockRecord]]:
        """Prune every block; ``captured`` may be ``None`` only for methods that need no statistics.

        With a ``checkpoint``, blocks an earlier run finished are restored instead of pruned, and each block is
        saved to it once done.
        """
        if isinstance(self.options.reconstructor, BlockReconstructor):  # offloaded weights fail here, before pruning
            for block in self.layout.blocks:
                self._trainable_weights(block)
        layers: list[LayerRecord] = []
        blocks: list[BlockRecord] = []
        done = checkpoint.completed_blocks() if checkpoint is not None else 0
        if done:
            layers, blocks = checkpoint.restore(self.layout, captured)
        with self._eager_experts():
            for index, block in enumerate(self._progress(self.layout.blocks, "Pruning blocks")):
                if index >= done:
                    layers.extend(self._prune_block(method, pattern, layer_sparsity, captured, index, block, blocks))
                    if checkpoint is not None:
                        checkpoint.save_block(index, block, captured, layers, blocks)
        return layers, blocks

    def _prune_block(self, method, pattern, layer_sparsity, captured, index, block, blocks) -> list[LayerRecord]:
        started = time.perf_counter()
        name = self.layout.block_name(index)
        sparsity = layer_sparsity[name]
        linears = find_prunable_linears(block, self.options.ignore)
        store = ExpertStore(block)
        matrices = self._expert_matrices(block)
        with self._placed(block):
            if captured is None:
                records = [self._prune_linear(method, index, n, m, None, sparsity, pattern)[0] for n, m in linears.items()]
                records += [self._prune_expert(method, index, store, m, None, sparsity, pattern) for m in matrices]
            elif self.options.schedule == "one-pass":
                records = self._prune_block_one_pass(method, index, block, linears, captured, sparsity, pattern, store)
            else:
                records = self._prune_block_sequential(method, index, block, linears, captured, sparsity, pattern, store)
            store.flush()
        blocks.append(_block_record(index, name, sparsity, records, time.perf_counter() - started))
        return records

    def _expert_matrices(self, block: nn.Module) -> list[ExpertMatrix]:
        """Every expert matrix of ``block``'s fused experts, except those matching ``ignore``."""
        return [
            matrix
            for fused in find_fused_experts(block)
            for matrix in fused.matrices()
            if not any(pattern in f"{fused.name}.{matrix.parameter}" for pattern in self.options.ignore)
        ]

    def _expert_lists(self, block: nn.Module, linears: dict[str, nn.Module]) -> dict[str, list[list[str]]]:
        """``nn.ModuleList`` experts: MoE module path → for each expert, the names of its pruned Linears."""
        found = {}
        for moe in find_moe_blocks(block):
            if moe.fused is None:
                prefix = f"{moe.name}.experts." if moe.name else "experts."
                found[moe.name] = [
                    [n for n in linears if n.startswith(f"{prefix}{expert}.")] for expert in range(moe.num_experts)
                ]
        return found

    def _experts_path(self, index: int, moe: str) -> str:
        return ".".join(part for part in (self.layout.block_name(index), moe, "experts") if part)

    def _module_list_statistics(self, block, index, captured, collector, counter, lists, hessian) -> dict[str, dict]:
        """Sequential schedule, ``nn.ModuleList`` experts: those routed fewer than ``min_expert_tokens`` tokens (every
        one under ``"all"``) get statistics over every token from one more pass. Returns each Linear's expert facts."""
        counter.all_reduce_counts()
        everything = self.options.moe_calibration == "all"
        runs = {
            moe: [e for e, count in enumerate(counter.tokens[moe]) if everything or count < self.options.min_expert_tokens]
            for moe in lists
        }
        runs = {moe: experts for moe, experts in runs.items() if experts}
        if runs:
            fallback = {n: block.get_submodule(n) for moe, experts in runs.items() for e in experts for n in lists[moe][e]}
            for name in fallback:
                collector.stats.pop(name, None)
            second = StatisticsCollector(fallback, hessian=hessian)
            second.paused = True
            calls = ExpertListCalls(block, runs, collector=second)
            try:
                self._run_block(block, index, captured, (second, calls), keep_outputs=False)
            finally:
                second.remove()
                calls.remove()
            collector.stats.update(second.stats)
        return {
            name: {
                "experts": self._experts_path(index, moe),
                "expert": expert,
                "tokens": counter.tokens[moe][expert],
                "statistics": "all" if expert in runs.get(moe, ()) else "routed",
            }
            for moe, experts in lists.items()
            for expert, names in enumerate(experts)
            for name in names
        }

    def _statistics_collector(self, block, linears, hessian: bool, stop_early: bool = True) -> StatisticsCollector:
        """A collector for a statistics-only pass, stopping each batch after the block's last Linear call; from
        the first batch on when an earlier block of the same structure taught the call order."""
        expected = self._call_orders.get((type(block), tuple(linears)))
        return StatisticsCollector(linears, hessian=hessian, stop_early=stop_early, expected_calls=expected)

    def _learn_call_order(self, block, linears, collector: StatisticsCollector) -> None:
        if collector.call_order is not None:
            self._call_orders[(type(block), tuple(linears))] = collector.call_order

    def _expert_collector(self, block, hessian: bool, prune=None) -> ExpertCollector | None:
        experts = [f for f in find_fused_experts(block) if any(m.experts == f.name for m in self._expert_matrices(block))]
        if not experts:
            return None
        return ExpertCollector(
            experts, hessian, self.options.moe_calibration, self.options.min_expert_tokens, prune=prune
        )

    def _prune_block_sequential(
        self, method, index, block, linears, captured, sparsity, pattern, store
    ) -> list[LayerRecord]:
        # Accelerate's hooks move weights back in their post-forward, which a stopped forward would skip; experts
        # are called in an order that depends on routing, so no call is known to be a block's last.
        stop_early = not any(hasattr(module, "_hf_hook") for module in block.modules()) and not find_moe_blocks(block)
        hessian = self._needs_gram(method)
        fit = self.options.reconstructor if isinstance(self.options.reconstructor, BlockReconstructor) else None
        if fit is not None:  # the dense block's outputs on the dense model's own inputs, before pruning it
            reference = captured.reference if captured.reference is not None else list(captured.hidden)
            targets = self._outputs(block, index, captured, reference)
        collector = self._statistics_collector(block, linears, hessian, stop_early)
        experts = self._expert_collector(block, hessian)
        lists = self._expert_lists(block, linears)
        counter = ExpertListCalls(block, {moe: [] for moe in lists}) if lists else None
        try:
            self._run_block(block, index, captured, (collector, experts, counter), keep_outputs=False)
            self._learn_call_order(block, linears, collector)
            collector.remove()
            if counter is not None:
                counter.remove()
                list_info = self._module_list_statistics(block, index, captured, collector, counter, lists, hessian)
            if experts is not None:
                experts.all_reduce_counts()
                fallback = experts.fallback_experts()
                if fallback:  # one more pass, for the experts that were routed too few tokens
                    experts.use_all_tokens_for(fallback)
                    self._run_block(block, index, captured, experts, keep_outputs=False)
                experts.all_reduce_statistics()
        finally:
            collector.remove()
            if experts is not None:
                experts.remove()
            if counter is not None:
                counter.remove()
        _all_reduce(collector.stats)
        records, removed, deltas = [], {}, {}
        for name, module in linears.items():
            record, delta = self._prune_linear(method, index, name, module, collector.stats.get(name), sparsity, pattern)
            if counter is not None:
                record.info.update(list_info.get(name, {}))
            records.append(record)
            if delta is not None:
                deltas[name] = delta
                if record.reconstruction_error is None:
                    removed[name] = delta
        if experts is not None:
            for matrix in self._expert_matrices(block):
                records.append(self._prune_expert(method, index, store, matrix, experts, sparsity, pattern))
            store.flush()
        if fit is None:
            self._output_pass(block, index, captured, linears, records, removed)
        else:
            self._fit_block(fit, block, index, captured, linears, records, (removed, deltas), targets)
            captured.reference = targets
        return records

    def _output_pass(self, block, index, captured, linears, records, removed) -> None:
        """Run the pruned block over every batch for the next block's inputs, measuring the error of the Linears
        in ``removed`` (``W − Ŵ`` by name) into their records."""
        meter = ErrorMeter(linears, removed, root=block) if removed else None
        try:
            self._run_block(block, index, captured, meter, keep_outputs=True)
        finally:
            if meter is not None:
                meter.remove()
        if meter is not None:
            _all_reduce_meter(meter)
            errors = meter.result()
            for name, record in zip(linears, records):
                if name in errors:
                    record.reconstruction_error = errors[name]

    def _prune_block_one_pass(
        self, method, index, block, linears, captured, sparsity, pattern, store
    ) -> list[LayerRecord]:
        records: dict[str, LayerRecord] = {}
        expert_records: list[LayerRecord] = []
        matrices = self._expert_matrices(block)

        def prune_experts(fused, parameter: str) -> None:
            for matrix in matrices:
                if matrix.experts == fused.name and matrix.parameter == parameter:
                    expert_records.append(self._prune_expert(method, index, store, matrix, experts, sparsity, pattern))
            # Offloaded experts: accelerate's hook loads them from its offload map for every later call (the
            # statistics of the next parameter, the real call), so the pruned values must be there now.
            store.flush()

        removed: dict[str, torch.Tensor] = {}
        reduced: set[int] = set()  # q/k/v share one statistic: sum it over processes once

        def prune(name: str, module: nn.Module, stats: InputStatistics) -> None:
            if name in records:
                return
            if id(stats) not in reduced:
                stats.all_reduce()
                reduced.add(id(stats))
            record, delta = self._prune_linear(method, index, name, module, stats, sparsity, pattern)
            if record.reconstruction_error is None and delta is not None:
                removed[name] = delta
            records[name] = record

        def prune_before_use(name: str, module: nn.Module, stats: InputStatistics, x: torch.Tensor) -> None:
            sync(name, lambda: prune(name, module, stats))

        collector = StatisticsCollector(linears, hessian=self._needs_gram(method), on_input=prune_before_use)
        experts = self._expert_collector(block, self._needs_gram(method), prune=prune_experts)
        meter = ErrorMeter(linears, removed, root=block) if self.options.measure_error and not self._needs_gram(method) else None
        lists = self._expert_lists(block, linears)
        everything = self.options.moe_calibration == "all"
        # nn.ModuleList experts: under "all" each runs on every token before the module (and is pruned there);
        # under "routed" each is pruned at its first routed call, and one never called from every token after.
        calls = ExpertListCalls(
            block, {moe: list(range(len(e))) if everything else [] for moe, e in lists.items()}, keep_inputs=True
        ) if lists else None
        try:
            self._run_block(block, index, captured, (collector, experts, meter, calls), keep_outputs=True, lockstep=True)
            for moe, per_expert in lists.items():
                unrouted = [e for e, names in enumerate(per_expert) if any(n not in records for n in names)]
                if unrouted:
                    calls.run(moe, torch.cat(calls.inputs[moe]), unrouted)
        finally:
            collector.remove()
            if experts is not None:
                experts.remove()
            if meter is not None:
                meter.remove()
            if calls is not None:
                calls.remove()
        for moe, per_expert in lists.items():
            for expert, names in enumerate(per_expert):
                routed = calls.tokens[moe][expert]
                for name in names:
                    records[name].info.update(
                        experts=self._experts_path(index, moe), expert=expert, tokens=routed,
                        statistics="all" if everything or not routed else "routed",
                    )
        pruned = {record.name for record in expert_records}
        for matrix in matrices:  # an experts module the pass never called (no MoE layer ran)
            if f"{self.layout.block_name(index)}.{matrix.name}" not in pruned:
                raise NumericalError(f"block {self.layout.block_name(index)}: experts {matrix.experts} were never called.")
        missing = [name for name in linears if name not in records]
        if missing:
            raise NumericalError(f"block {self.layout.block_name(index)}: Linears {missing} received no input.")
        if meter is not None:
            _all_reduce_meter(meter)
            for name, error in meter.result().items():
                records[name].reconstruction_error = error
        return [records[name] for name in linears] + expert_records

    def _prune_expert(
        self, method, index, store: ExpertStore, matrix: ExpertMatrix, experts: ExpertCollector | None, sparsity, pattern
    ) -> LayerRecord:
        stats = experts.statistics(matrix) if experts is not None else None
        info = {"experts": f"{self.layout.block_name(index)}.{matrix.experts}", "expert": matrix.expert}
        if experts is not None:
            info["tokens"] = experts.tokens[matrix.experts][matrix.expert]
            info["statistics"] = experts.sources[matrix.experts][matrix.expert]
        record, _ = self._prune_weight(
            method, index, matrix.name, store.read(matrix), lambda weight: store.write(matrix, weight), stats,
            sparsity, pattern,
        )
        record.info = {**record.info, **info}
        return record

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
        block = self.layout.blocks[index]
        return self._prune_weight(
            method,
            index,
            name,
            read_weight(module, root=block, name=name),
            lambda weight: write_weight(module, weight, root=block, name=name),
            stats,
            sparsity,
            pattern,
        )

    def _prune_weight(
        self,
        method: PruningMethod,
        index: int,
        name: str,
        weight: torch.Tensor,
        write,
        stats: InputStatistics | None,
        sparsity: float,
        pattern: SparsityPattern,
    ) -> tuple[LayerRecord, torch.Tensor | None]:
        """Prune one ``[out, in]`` matrix (a Linear's weight or one expert's) and write it with ``write``."""
        full_name = f"{self.layout.block_name(index)}.{name}"
        started = time.perf_counter()
        # Offloaded weights come from CPU RAM or disk; the math runs where the block's activations were.
        device = stats.squared_sum.device if stats is not None else weight.device
        weight = weight.to(device=device, dtype=torch.float32, copy=True)
        if not _all_finite(weight):
            raise NumericalError(f"{full_name} has NaN or inf weights before pruning; check the model checkpoint.")
        if stats is not None and not torch.isfinite(stats.squared_norms).all():
            raise NumericalError(
                f"{full_name} received NaN or inf inputs in block {self.layout.block_name(index)} (an earlier layer "
                "overflowed); load fp16 models in bfloat16 or float32, and check the weights before this Linear."
            )
        try:
            result = method.prune(weight, stats, sparsity, pattern)
            if self.options.refiner is not None and stats is not None:
                result = self._refine(weight, result, stats, sparsity, pattern)
            if isinstance(self.options.reconstructor, WeightReconstructor) and stats is not None:
                result = self.options.reconstructor.reconstruct(weight, result, stats)
        except NumericalError as error:
            raise NumericalError(f"{full_name}: {error}") from error
        broadcast_(result.weight)  # every process keeps the main process's result, bit for bit
        written = write(result.weight)
        delta = weight - written.to(weight.device, torch.float32) if self.options.measure_error and stats is not None else None
        error = None
        if delta is not None and stats.gram is not None:
            error = hessian_error(delta, weight, stats.gram)
        record = LayerRecord(
            name=full_name,
            block=index,
            shape=list(written.shape),
            requested_sparsity=sparsity if pattern.is_unstructured else float(pattern.implied_sparsity),
            measured_sparsity=count_zeros(written) / written.numel(),
            reconstruction_error=error,
            seconds=time.perf_counter() - started,
            info=result.info,
        )
        return record, delta

    def _needs_gram(self, method: PruningMethod) -> bool:
        return (
            method.needs == "hessian"
            or self.options.refiner is not None
            or isinstance(self.options.reconstructor, WeightReconstructor)
        )

    def _refine(self, weight, result, stats, sparsity, pattern):
        before = hessian_error(weight - result.weight, weight, stats.gram)
        refined = self.options.refiner.refine(weight, result, stats, sparsity, pattern)
        after = hessian_error(weight - refined.weight, weight, stats.gram)
        refined.info = {**result.info, **refined.info, "error_before_refine": before, "error_after_refine": after}
        return refined

    @contextmanager
    def _placed(self, block: nn.Module):
        """With ``execution_device``: the block on that device for the body, then back where it was."""
        device = resolve_device(self.options.execution_device)
        if device is None or getattr(block, "_hf_hook", None) is not None:
            yield
            return
        tensors = list(block.parameters()) + list(block.buffers())
        if any(t.device.type == "meta" for t in tensors):
            yield
            return
        # One tensor per original device; blocks are almost always on a single device.
        home = tensors[0].device if tensors else device
        block.to(device)
        try:
            yield
        finally:
            block.to(home)

    def _run_block(self, block, index, captured, hooks, keep_outputs: bool, lockstep: bool = False) -> None:
        """Run ``block`` over every batch; ``hooks`` (one hook set, a tuple of them, or ``None``) see each batch's
        padding mask. With ``lockstep`` the batches run as a :class:`Lockstep`, meeting where hooks :func:`sync`."""
        hook_sets = [h for h in (hooks if isinstance(hooks, tuple) else (hooks,)) if h is not None]
        call = self._block_call(block, index, captured)

        def run(batch: int) -> None:
            hidden = captured.hidden[batch]
            for hook_set in hook_sets:
                hook_set.token_mask = captured.token_masks[batch]
            try:
                output = call(hidden, batch)
            except AllInputsGathered:
                if keep_outputs:
                    raise
                output = None
            for hook_set in hook_sets:
                if isinstance(hook_set, StatisticsCollector):
                    hook_set.end_batch()
            if keep_outputs:
                if not _all_finite(output):
                    raise NumericalError(
                        f"block {self.layout.block_name(index)} produced NaN or inf activations; for fp16 "
                        "models load in bfloat16 or float32."
                    )
                captured.hidden[batch] = output.to(hidden.device)

        batches = range(len(captured.hidden))
        with torch.no_grad():
            if lockstep:
                Lockstep().run([lambda batch=batch: run(batch) for batch in batches])
            else:
                for batch in batches:
                    run(batch)

    def _block_call(self, block, index, captured):
        """A function running ``block`` on one batch's hidden states (the samples ``rows`` of it, when given) with
        that batch's call arguments, on the block's device, returning its hidden output."""
        device = _block_device(block)
        moved: dict[int, tuple[tuple, dict]] = {}

        def call(hidden: torch.Tensor, batch: int, rows: slice | None = None) -> torch.Tensor:
            arguments = captured.calls[batch][index]
            args, kwargs = arguments.args, arguments.kwargs
            if device is not None:
                hidden = hidden.to(device)
                # Masks, position ids and rotary embeddings were computed where the embeddings ran.
                if id(arguments) not in moved:
                    moved[id(arguments)] = (send_to_device(args, device), send_to_device(kwargs, device))
                args, kwargs = moved[id(arguments)]
            if rows is not None:
                size = hidden.shape[0]
                hidden, args, kwargs = hidden[rows], sample_rows(args, rows, size), sample_rows(kwargs, rows, size)
            return block_hidden_output(block(hidden, *args, **kwargs))

        return call

    def _trainable_weights(self, block) -> list[torch.Tensor]:
        linears = find_prunable_linears(block, self.options.ignore)
        fused = [(module, name) for key, (module, name) in fused_parameters(block).items()
                 if not any(pattern in key for pattern in self.options.ignore)]
        return trainable_weights(linears, fused)

    def _each_output(self, block, index, captured, hidden: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """``block``'s outputs on ``hidden``, one batch at a time, each where its input was. The caller holds
        ``torch.no_grad()`` while it consumes them (a generator cannot hold it without leaking it between batches)."""
        call = self._block_call(block, index, captured)
        return (call(h, batch).to(h.device) for batch, h in enumerate(hidden))

    def _outputs(self, block, index, captured, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """``block``'s outputs on ``hidden`` (one tensor per batch, kept where the inputs were)."""
        with torch.no_grad():
            return list(self._each_output(block, index, captured, hidden))

    def _fit_block(self, fit, block, index, captured, linears, records, removed, targets) -> None:
        """Re-fit the pruned ``block`` towards ``targets``, then the output pass; where the fit did not lower the
        block error, restore the method's weights and run the output pass again. ``removed`` is the method's
        ``W − Ŵ`` of the Linears to meter, and of every Linear."""
        method_removed, deltas = removed
        inputs = list(captured.hidden)
        with torch.no_grad():  # outputs one batch at a time, none kept
            before = block_error(self._each_output(block, index, captured, inputs), targets, captured.token_masks)
        dense = {name: read_weight(linears[name], root=block, name=name).float() + delta for name, delta in deltas.items()}
        weights = self._trainable_weights(block)
        fitted, details = fit_block(fit, weights, self._block_call(block, index, captured), inputs, targets,
                                    captured.token_masks)
        refitted = {name: weight - read_weight(linears[name], root=block, name=name).float() for name, weight in dense.items()}
        for record in records:  # measured again below for Linears; unknown for experts
            record.reconstruction_error = None
        self._output_pass(block, index, captured, linears, records, refitted)
        after = block_error(captured.hidden, targets, captured.token_masks)
        kept = after < before
        if not kept:
            fitted.restore()
            captured.hidden[:] = inputs
            self._output_pass(block, index, captured, linears, records, method_removed)
        for record in records:
            record.info.update(
                details, block_error_before_reconstruct=before, block_error_after_reconstruct=after if kept else before,
                block_reconstructed=kept,
            )

    def _progress(self, blocks: nn.ModuleList, description: str):
        return tqdm(blocks, desc=description, unit="block", disable=not self.options.progress)


def _all_finite(tensor: torch.Tensor) -> bool:
    # A float32 sum is NaN/inf exactly when some element is (finite values would need to exceed 3e38),
    # and costs far less than an elementwise isfinite over the whole tensor.
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32)))


def _all_reduce(stats: dict[str, InputStatistics]) -> None:
    for unique in {id(s): s for s in stats.values()}.values():
        unique.all_reduce()


def _all_reduce_meter(meter: ErrorMeter) -> None:
    """Sum each process's reconstruction-error terms, so every process reports the error over all samples."""
    names = list(meter.error)
    sums = all_reduce_sums([meter.error[n] for n in names] + [meter.reference[n] for n in names])
    meter.error = dict(zip(names, sums[: len(names)]))
    meter.reference = dict(zip(names, sums[len(names) :]))


def _block_record(index, name, sparsity, records, seconds) -> BlockRecord:
    total = sum(r.shape[0] * r.shape[1] for r in records)
    zeros = sum(r.measured_sparsity * r.shape[0] * r.shape[1] for r in records)
    requested = records[0].requested_sparsity if records else sparsity
    return BlockRecord(index, name, requested, zeros / total if total else 0.0, seconds)
