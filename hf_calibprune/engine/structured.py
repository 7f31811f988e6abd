"""The structured pruning walk: gather statistics block by block, choose heads, channels or blocks, cut them out.

Width (``pattern="channels"``): for each block, the inputs of its attention and MLP output projections are
gathered over the calibration tokens (the same :class:`StatisticsCollector` as masks use), the method scores each
key/value group and MLP channel, the chosen ones are zeroed in the output projections (with FLAP's bias
compensation) and the block runs again to produce the next block's inputs, as the sequential mask schedule
does. Zeroed columns compute exactly what removal computes, so the walk never changes a shape; once every block is
done, :func:`~hf_calibprune.models.surgery.apply_width` cuts the structures out and rewrites the config.

Depth (``pattern="blocks"``): the method asks for measurements (block influence, or calibration loss without
given blocks) and :func:`~hf_calibprune.models.surgery.remove_blocks` deletes the chosen blocks.

Experts (``pattern="experts"``): for each block with Mixture-of-Experts modules, REAP's saliency of every routed
expert is gathered over the calibration tokens (:class:`~hf_calibprune.engine.saliency.SaliencyCollector`), the
method scores the experts, the lowest-scored are cut out of the block at once
(:func:`~hf_calibprune.models.surgery.cut_experts`) and the smaller block runs again to produce the next block's
inputs, so every block is scored on the outputs of the already pruned blocks before it.

Every walk can save its steps to a :class:`~hf_calibprune.engine.checkpointing.BlockCheckpoint` (per block, or per
greedy round) and continue from one after a kill. Edits of blocks whose weights accelerate offloads run inside
:func:`~hf_calibprune.engine.offload.materialized`, which writes the new shapes back into the offload maps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..methods import PruningMethod
from ..models import MoeBlock, find_moe_blocks
from ..models.experts import RoutingLimits, expert_weight_norms, routing_limits
from ..models.surgery import (
    BlockWidth,
    add_output_bias,
    added_bias_parameters,
    apply_width,
    bias_route,
    block_width,
    cut_experts,
    decoder_parameters,
    remove_blocks,
    set_expert_count,
    text_config,
)
from ..records import BlockRecord, LayerRecord
from ..structured import (
    BlockSelector,
    WidthPlan,
    block_influence_terms,
    compensation_bias,
    expert_removal_count,
    group_scores,
    lowest_experts,
    lowest_indices,
    plan_width,
)
from .block_fit import sample_rows
from .capture import CapturedInputs, block_hidden_output
from .checkpointing import BlockCheckpoint
from .distributed import all_reduce_sums, shard_slice
from .loop import LayerwiseEngine, _all_reduce
from .offload import materialized, read_parameter, read_weight, write_weight
from .saliency import SaliencyCollector

__all__ = ["StructuredEngine", "StructuredResult"]

logger = logging.getLogger(__name__)


@dataclass
class StructuredResult:
    """What a structured walk removed, for the report.

    Args:
        layers (`list[LayerRecord]`): every Linear whose shape changed (``measured_sparsity`` = fraction removed).
        blocks (`list[BlockRecord]`): per block, the fraction of its parameters removed.
        structure (`dict`): parameters before/after and what went, per block.
    """

    layers: list[LayerRecord] = field(default_factory=list)
    blocks: list[BlockRecord] = field(default_factory=list)
    structure: dict[str, Any] = field(default_factory=dict)


def _model_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def _linear_sizes(model: nn.Module, prefix: str, blocks: nn.ModuleList) -> dict[str, tuple[int, int]]:
    return {
        f"{prefix}.{i}.{name}": tuple(module.weight.shape)
        for i, block in enumerate(blocks)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    }


class StructuredEngine(LayerwiseEngine):
    """Walks the decoder blocks for ``pattern="channels"`` and ``"blocks"``; model surgery happens at the end."""

    # Width --------------------------------------------------------------------------------------

    def plan_width(
        self, method: PruningMethod, sparsity: float, warn: bool = False
    ) -> tuple[WidthPlan, tuple[str, ...], tuple[str, ...]]:
        """Per-block counts for ``sparsity``, the parts that get FLAP's compensation bias, and those of them whose
        config flag must be switched on to hold it. Raises before any work for a sparsity that cannot be met."""
        width = block_width(self.model, self.layout.blocks[0])
        possible = self._compensable_parts(method, width, warn)
        flagged = tuple(part for part in possible if bias_route(self.model, width, part) == "config")
        added = {part: added_bias_parameters(width, part) for part in flagged}
        plan = plan_width(
            sparsity,
            sum(p.numel() for p in self.layout.blocks[0].parameters()),
            width.attention.num_groups,
            width.group_parameters(),
            width.mlp.num_channels,
            width.channel_parameters(),
            heads_removable=width.heads_removable,
            added_attention=added.get("attention", (0, 0)),
            added_mlp=added.get("mlp", (0, 0)),
        )
        removes = {"attention": plan.groups > 0, "mlp": plan.channels > 0}
        compensated = tuple(part for part in possible if removes[part])
        return plan, compensated, tuple(part for part in flagged if removes[part])

    def _compensable_parts(self, method: PruningMethod, width: BlockWidth, warn: bool) -> tuple[str, ...]:
        if not getattr(method, "compensates_bias", False):
            return ()
        parts = ("attention", "mlp") if width.heads_removable else ("mlp",)
        possible = tuple(part for part in parts if bias_route(self.model, width, part) is not None)
        for part in parts:
            if part not in possible and warn:
                logger.warning(
                    "%s's %s output projection has no bias and its config cannot add one: FLAP's bias compensation "
                    "is skipped there.", type(self.model).__name__, part
                )
        return possible

    def remove_channels(
        self,
        method: PruningMethod,
        sparsity: float,
        captured: CapturedInputs | None,
        checkpoint: BlockCheckpoint | None = None,
    ) -> StructuredResult:
        """Remove attention key/value groups and MLP channels from every block (``pattern="channels"``).

        With a ``checkpoint``, blocks an earlier run finished are restored (their zeroed columns, compensation
        biases and choices) instead of scored again, and each block is saved to it once done; the cut comes last.
        """
        plan, compensated, flagged = self.plan_width(method, sparsity, warn=True)
        before_model, before_blocks = _model_parameters(self.model), decoder_parameters(self.layout)
        sizes_before = _linear_sizes(self.model, self.layout.prefix, self.layout.blocks)
        block_before = [sum(p.numel() for p in b.parameters()) for b in self.layout.blocks]
        per_group = block_width(self.model, self.layout.blocks[0]).attention
        per_group = per_group.num_heads // per_group.num_kv_heads
        removed: dict[int, tuple[list[int], list[int]]] = {}
        records: list[BlockRecord] = []
        if checkpoint is not None and checkpoint.completed_blocks():
            _, records = checkpoint.restore(self.layout, captured)
            for index in range(checkpoint.completed_blocks()):
                removed[index] = self._restore_width(self.layout.blocks[index], checkpoint.saved_extra(index))
        for index, block in enumerate(self._progress(self.layout.blocks, "Scoring heads and channels")):
            if index in removed:
                continue
            started = time.perf_counter()
            width = block_width(self.model, block)
            with self._placed(block):
                removed[index] = self._remove_in_block(method, index, block, width, plan, compensated, captured)
            records.append(BlockRecord(index, self.layout.block_name(index), sparsity, 0.0, time.perf_counter() - started))
            if checkpoint is not None:
                checkpoint.save_block(index, block, captured, [], records, extra=_width_extra(block, width, *removed[index]))
        seconds = [record.seconds for record in records]
        apply_width(self.model, self.layout, removed, added_bias=flagged, editing=materialized)
        result = self._result(sparsity, sizes_before, block_before, seconds, before_model, before_blocks)
        result.structure.update(
            pattern="channels",
            groups_per_block=plan.groups,
            channels_per_block=plan.channels,
            bias_compensation=list(compensated),
            removed={
                self.layout.block_name(i): {
                    "kv_groups": g, "heads": [q * per_group + h for q in g for h in range(per_group)], "channels": c
                }
                for i, (g, c) in removed.items()
            },
        )
        return result

    def _remove_in_block(self, method, index, block, width: BlockWidth, plan: WidthPlan, compensated, captured):
        outputs = {width.mlp.output_name: width.mlp.output}
        if width.heads_removable:
            outputs[width.attention.output_name] = width.attention.output
        stats = {}
        if captured is not None:
            collector = self._statistics_collector(block, outputs, hessian=False)
            try:
                self._run_block(block, index, captured, collector, keep_outputs=False)
                self._learn_call_order(block, outputs, collector)
            finally:
                collector.remove()
            _all_reduce(collector.stats)
            stats = collector.stats
        chosen: dict[str, list[int]] = {}
        if plan.groups:
            name = width.attention.output_name
            weight = read_weight(width.attention.output, root=block, name=name).float()
            scores = group_scores(method.channel_scores(weight, stats.get(name)), width.attention.group_width)
            groups = lowest_indices(scores, plan.groups)
            columns = [g * width.attention.group_width + c for g in groups for c in range(width.attention.group_width)]
            chosen["attention"] = groups
            self._zero_columns(block, name, width.attention.output, weight, columns, stats.get(name), "attention" in compensated)
        if plan.channels:
            name = width.mlp.output_name
            weight = read_weight(width.mlp.output, root=block, name=name).float()
            channels = lowest_indices(method.channel_scores(weight, stats.get(name)), plan.channels)
            chosen["mlp"] = channels
            self._zero_columns(block, name, width.mlp.output, weight, channels, stats.get(name), "mlp" in compensated)
        if captured is not None:
            self._run_block(block, index, captured, None, keep_outputs=True)
        return chosen.get("attention", []), chosen.get("mlp", [])

    def _zero_columns(self, block, name, linear, weight, columns, stats, compensate: bool) -> None:
        index = torch.tensor(columns, dtype=torch.long, device=weight.device)
        if compensate and stats is not None:
            with materialized(block):  # offloaded: the bias may be new, and goes into the offload map
                add_output_bias(linear, compensation_bias(weight, stats.mean, index))
        write_weight(linear, weight.index_fill(1, index, 0.0), root=block, name=name)

    def _restore_width(self, block: nn.Module, saved: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
        """Put back a finished block's output biases (the weights are restored already); return its choices."""
        with materialized(block):
            for key, bias in saved.items():
                if key.startswith("bias."):
                    linear = block.get_submodule(key[len("bias.") :])
                    if linear.bias is None:
                        add_output_bias(linear, bias)
                    else:
                        with torch.no_grad():
                            linear.bias.copy_(bias)
        return saved["kv_groups"].tolist(), saved["channels"].tolist()

    # Depth --------------------------------------------------------------------------------------

    def block_count(self, sparsity: float) -> int:
        """Blocks removed for ``sparsity``: the nearest whole number of blocks; raises if that is all of them."""
        total = len(self.layout.blocks)
        count = math.floor(sparsity * total + 0.5)
        if count >= total:
            raise ConfigError(
                f"`sparsity={sparsity}` with pattern='blocks' would remove all {total} decoder blocks; pass a sparsity "
                f"below {(total - 0.5) / total:.3f}."
            )
        return count

    def remove_blocks(
        self,
        method: BlockSelector,
        sparsity: float,
        captured: CapturedInputs,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        checkpoint: BlockCheckpoint | None = None,
    ) -> StructuredResult:
        """Remove the decoder blocks ``method`` selects (``pattern="blocks"``).

        With a ``checkpoint``, each measuring step is saved (block influence: per block, with the next block's
        inputs; the greedy method: per round) and a rerun takes the steps an earlier run finished from it.
        """
        count = self.block_count(sparsity)
        before_model, before_blocks = _model_parameters(self.model), decoder_parameters(self.layout)
        names = [self.layout.block_name(i) for i in range(len(self.layout.blocks))]
        sizes = [sum(p.numel() for p in b.parameters()) for b in self.layout.blocks]
        started = time.perf_counter()
        measures = _Measures(self, captured, input_ids, attention_mask, getattr(method.options, "eval_samples", None),
                             checkpoint)
        chosen = method.select_blocks(count, measures) if count else []
        remove_blocks(self.model, self.layout, chosen)
        seconds = time.perf_counter() - started
        result = StructuredResult(
            blocks=[BlockRecord(i, names[i], sparsity, 1.0 if i in chosen else 0.0, seconds / len(names)) for i in range(len(names))],
        )
        after_blocks = decoder_parameters(self.layout)
        result.structure = {
            "pattern": "blocks",
            "removed_blocks": [names[i] for i in chosen],
            "parameters_before": before_blocks,
            "parameters_after": after_blocks,
            "model_parameters_before": before_model,
            "model_parameters_after": _model_parameters(self.model),
            "removed_fraction": 1.0 - after_blocks / before_blocks,
            "block_parameters": dict(zip(names, sizes)),
        }
        if measures.influence_cache is not None:
            result.structure["block_influence"] = dict(zip(names, measures.influence_cache))
        if measures.rounds:
            result.structure["greedy_losses"] = measures.rounds
        return result

    # Experts ------------------------------------------------------------------------------------

    def plan_experts(self, method: PruningMethod, sparsity: float) -> tuple[int, int, RoutingLimits]:
        """``(experts removed per MoE block, experts per block, routing limits)`` for ``sparsity``; raises before any
        work for a model without MoE blocks, unequal expert counts, or a count the routing cannot live with."""
        found = [(block, moe) for block in self.layout.blocks for moe in find_moe_blocks(block)]
        if not found:
            raise ConfigError(
                "pattern='experts' removes routed experts of Mixture-of-Experts blocks, and "
                f"{type(self.model).__name__} has none; use pattern='channels' or 'blocks'."
            )
        counts = sorted({moe.num_experts for _, moe in found})
        if len(counts) > 1:
            raise ConfigError(
                f"pattern='experts' keeps one expert count for every MoE block (one ordinary config), but this model's "
                f"blocks hold {counts} experts."
            )
        try:
            limits = routing_limits(text_config(self.model), *found[0])
        except ValueError as error:
            raise ConfigError(f"pattern='experts' cannot check the routing: {error}") from error
        count = expert_removal_count(sparsity, counts[0], limits.top_k, limits.num_groups, limits.topk_groups)
        return count, counts[0], limits

    def remove_experts(
        self,
        method: PruningMethod,
        sparsity: float,
        captured: CapturedInputs | None,
        checkpoint: BlockCheckpoint | None = None,
    ) -> StructuredResult:
        """Remove the lowest-scored routed experts of every MoE block (``pattern="experts"``).

        With a ``checkpoint``, blocks an earlier run finished are cut again from their saved choices (the cut only
        selects, so the weights are the same) instead of scored, and each block is saved to it once done.
        """
        count, num_experts, limits = self.plan_experts(method, sparsity)
        before_model, before_blocks = _model_parameters(self.model), decoder_parameters(self.layout)
        sizes_before = _linear_sizes(self.model, self.layout.prefix, self.layout.blocks)
        block_before = [sum(p.numel() for p in b.parameters()) for b in self.layout.blocks]
        removed: dict[str, list[int]] = {}
        scores: dict[str, list[float]] = {}
        tokens: dict[str, list[int]] = {}
        records: list[BlockRecord] = []
        done = checkpoint.completed_blocks() if checkpoint is not None else 0
        for index in range(done):
            block, saved = self.layout.blocks[index], checkpoint.saved_extra(index)
            with materialized(block):
                for moe in find_moe_blocks(block) if count else []:
                    name = f"{self.layout.block_name(index)}.{moe.name}"
                    removed[name] = saved[f"removed.{moe.name}"].tolist()
                    scores[name] = saved[f"scores.{moe.name}"].tolist()
                    if f"tokens.{moe.name}" in saved:
                        tokens[name] = saved[f"tokens.{moe.name}"].tolist()
                    cut_experts(block, moe, removed[name])
        if done:  # the finished blocks have their cut shapes now, so their saved weights load
            _, records = checkpoint.restore(self.layout, captured)
        with self._eager_experts():
            for index, block in enumerate(self._progress(self.layout.blocks, "Scoring experts")):
                if index < done:
                    continue
                started = time.perf_counter()
                moes = find_moe_blocks(block) if count else []
                with self._placed(block):
                    collector = self._saliency(block, index, moes, captured) if moes and captured is not None else None
                    with materialized(block):  # offloaded: read once for every MoE module, cut shapes written back
                        for moe in moes:
                            name = f"{self.layout.block_name(index)}.{moe.name}"
                            saliency = collector.saliency(moe.name) if collector is not None else None
                            score = method.expert_scores(expert_weight_norms(block, moe), saliency)
                            removed[name] = lowest_experts(score, count, limits.num_groups)
                            scores[name] = [float(v) for v in score]
                            if collector is not None:
                                tokens[name] = [int(v) for v in collector.tokens[moe.name]]
                            cut_experts(block, moe, removed[name])
                    if captured is not None:
                        self._run_block(block, index, captured, None, keep_outputs=True)
                records.append(BlockRecord(index, self.layout.block_name(index), sparsity, 0.0, time.perf_counter() - started))
                if checkpoint is not None:
                    checkpoint.save_block(index, block, captured, [], records,
                                          extra=_experts_extra(self.layout.block_name(index), moes, removed, scores, tokens))
        seconds = [record.seconds for record in records]
        if count:
            set_expert_count(self.model, num_experts, num_experts - count)
        result = self._result(sparsity, sizes_before, block_before, seconds, before_model, before_blocks)
        result.structure.update(
            pattern="experts",
            experts_before=num_experts,
            experts_after=num_experts - count,
            removed_experts=removed,
            expert_scores=scores,
        )
        if tokens:
            result.structure["expert_tokens"] = tokens
        return result

    def _saliency(self, block: nn.Module, index: int, moes: list[MoeBlock], captured: CapturedInputs) -> SaliencyCollector:
        collector = SaliencyCollector(block, moes)
        try:
            self._run_block(block, index, captured, collector, keep_outputs=False)
        finally:
            collector.remove()
        collector.all_reduce()
        return collector

    def _result(self, sparsity, sizes_before, block_before, seconds, before_model, before_blocks) -> StructuredResult:
        sizes_after = _linear_sizes(self.model, self.layout.prefix, self.layout.blocks)
        layers = []
        for name, shape in sizes_after.items():
            old = sizes_before.get(name)
            if old is not None and tuple(old) != tuple(shape):
                block = int(name[len(self.layout.prefix) + 1 :].split(".")[0])
                layers.append(
                    LayerRecord(name, block, list(shape), sparsity, 1.0 - (shape[0] * shape[1]) / (old[0] * old[1]))
                )
        blocks = []
        for index, block in enumerate(self.layout.blocks):
            after = sum(p.numel() for p in block.parameters())
            blocks.append(BlockRecord(index, self.layout.block_name(index), sparsity, 1.0 - after / block_before[index], seconds[index]))
        after_blocks = decoder_parameters(self.layout)
        structure = {
            "parameters_before": before_blocks,
            "parameters_after": after_blocks,
            "model_parameters_before": before_model,
            "model_parameters_after": _model_parameters(self.model),
            "removed_fraction": 1.0 - after_blocks / before_blocks,
        }
        return StructuredResult(layers, blocks, structure)


def _width_extra(
    block: nn.Module, width: BlockWidth, groups: list[int], channels: list[int]
) -> dict[str, torch.Tensor]:
    """What a resume checkpoint keeps of a block's width walk besides its weights: the choices, and the output
    projections' biases (FLAP's compensation may have added or changed them), read wherever they live."""
    extra = {"kv_groups": torch.tensor(groups, dtype=torch.long), "channels": torch.tensor(channels, dtype=torch.long)}
    for part in (width.attention, width.mlp):
        if part.output.bias is not None:
            extra[f"bias.{part.output_name}"] = read_parameter(part.output, "bias", root=block, name=part.output_name)
    return extra


def _experts_extra(block_name: str, moes: list[MoeBlock], removed, scores, tokens) -> dict[str, torch.Tensor]:
    """What a resume checkpoint keeps of a block's expert walk besides its (cut) weights: per MoE module, the
    removed experts, every expert's score and, when measured, its routed tokens."""
    extra = {}
    for moe in moes:
        name = f"{block_name}.{moe.name}"
        extra[f"removed.{moe.name}"] = torch.tensor(removed[name], dtype=torch.long)
        extra[f"scores.{moe.name}"] = torch.tensor(scores[name], dtype=torch.float64)
        if name in tokens:
            extra[f"tokens.{moe.name}"] = torch.tensor(tokens[name], dtype=torch.long)
    return extra


class _Measures:
    """The measurements a :class:`BlockSelector` may ask for, on the captured calibration inputs.

    Under a multi-process launch each process measures its share of the samples and the sums are all-reduced, so
    every process makes the single-process choices: block influence over every sample, the calibration loss over
    the same first ``eval_samples`` samples (rounded up to whole batches of ``batch_size``) as one process takes.
    """

    def __init__(
        self,
        engine: StructuredEngine,
        captured,
        input_ids,
        attention_mask,
        eval_samples: int | None,
        checkpoint: BlockCheckpoint | None = None,
    ) -> None:
        self.engine = engine
        self.captured = captured
        self.first_inputs = list(captured.hidden)
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.evaluated = self._evaluated_rows(eval_samples)
        self.influence_cache: list[float] | None = None
        self.rounds: list[dict[str, float]] = []
        #: Saves each step (a block's influence with the next block's inputs, or a greedy round's losses); a rerun
        #: takes the finished steps from it.
        self.checkpoint = checkpoint
        self.done = checkpoint.completed_blocks() if checkpoint is not None else 0

    def _evaluated_rows(self, eval_samples: int | None) -> list[int]:
        """How many leading rows of each local batch the greedy loss reads (a prefix of this process's samples)."""
        sizes = [h.shape[0] for h in self.first_inputs]
        local = sum(sizes)
        if eval_samples is None:
            return sizes
        total = int(all_reduce_sums([float(local)])[0])
        batch_size = self.engine.options.batch_size
        wanted = min(total, -(-eval_samples // batch_size) * batch_size)
        left = min(max(wanted - shard_slice(total).start, 0), local)
        rows = []
        for size in sizes:
            if left <= 0:
                break
            rows.append(min(size, left))
            left -= rows[-1]
        return rows

    def influence(self) -> list[float]:
        if self.influence_cache is None:
            layout = self.engine.layout
            terms = [self.checkpoint.saved_extra(index)["influence"].tolist() for index in range(self.done)]
            if self.done:  # the inputs of the first unfinished block
                self.checkpoint.restore(layout, self.captured)
            hidden = self.captured.hidden
            for index, block in enumerate(self.engine._progress(layout.blocks, "Measuring block influence")):
                if index < self.done:
                    continue
                total, count = 0.0, 0
                for batch in range(len(hidden)):
                    output = self._forward(block, index, batch, hidden[batch])
                    s, n = block_influence_terms(hidden[batch], output, self.captured.token_masks[batch])
                    total, count = total + s, count + n
                    hidden[batch] = output
                terms.append(all_reduce_sums([total, float(count)]))
                if self.checkpoint is not None:
                    self.checkpoint.save_block(index, None, self.captured, [], [],
                                               extra={"influence": torch.tensor(terms[-1], dtype=torch.float64)})
            self.influence_cache = [total / max(count, 1.0) for total, count in terms]
        return self.influence_cache

    def loss_without(self, removed: Iterable[int]) -> list[float]:
        step = len(self.rounds)
        if step < self.done:  # a round an earlier run finished: the same removals so far, the same losses
            losses = self.checkpoint.saved_extra(step)["losses"].tolist()
        else:
            losses = self._measure_losses(set(removed))
            if self.checkpoint is not None:
                self.checkpoint.save_block(step, None, None, [], [],
                                           extra={"losses": torch.tensor(losses, dtype=torch.float64)})
        self.rounds.append({self.engine.layout.block_name(i): l for i, l in enumerate(losses) if math.isfinite(l)})
        return losses

    def _measure_losses(self, removed: set[int]) -> list[float]:
        blocks = self.engine.layout.blocks
        inputs: list[list[torch.Tensor]] = []
        hidden = [h[:rows] for h, rows in zip(self.first_inputs, self.evaluated)]
        for index, block in enumerate(blocks):
            inputs.append(hidden)
            if index not in removed:
                hidden = [self._forward(block, index, b, h) for b, h in enumerate(hidden)]
        candidates = [c for c in range(len(blocks)) if c not in removed]
        terms = []
        for candidate in self.engine._progress(candidates, f"Trying removals (round {len(removed) + 1})"):
            hidden = inputs[candidate]
            for index in range(candidate + 1, len(blocks)):
                if index not in removed:
                    hidden = [self._forward(blocks[index], index, b, h) for b, h in enumerate(hidden)]
            terms.append(self._loss_terms(hidden))
        sums = all_reduce_sums([total for total, _ in terms] + [tokens for _, tokens in terms])
        measured = dict(zip(candidates, (s / max(n, 1.0) for s, n in zip(sums[: len(terms)], sums[len(terms) :]))))
        return [measured.get(candidate, math.inf) for candidate in range(len(blocks))]

    def _forward(self, block: nn.Module, index: int, batch: int, hidden: torch.Tensor) -> torch.Tensor:
        call = self.captured.calls[batch][index]
        args, kwargs, size = call.args, call.kwargs, self.first_inputs[batch].shape[0]
        if hidden.shape[0] < size:  # the greedy loss reads only the leading rows of a batch
            rows = slice(0, hidden.shape[0])
            args, kwargs = sample_rows(args, rows, size), sample_rows(kwargs, rows, size)
        with torch.no_grad():
            return block_hidden_output(block(hidden, *args, **kwargs))

    def _loss_terms(self, final_hidden: list[torch.Tensor]) -> tuple[float, float]:
        """Summed next-token NLL of the model's head (final norm, lm_head) on ``final_hidden`` and the number of
        tokens it was summed over, padding excluded.

        The decoder blocks are swapped for stand-ins that return the given hidden states, so the model's own
        forward applies whatever follows its blocks; nothing is named per architecture.
        """
        layout = self.engine.layout
        originals = list(layout.blocks)
        size = self.captured.hidden[0].shape[0]
        total, tokens = 0.0, 0
        try:
            for batch, hidden in enumerate(final_hidden):
                for i in range(len(originals)):
                    layout.blocks[i] = _Replay(originals[i], hidden, bool(self.captured.tuple_output))
                ids = self.input_ids[batch * size : batch * size + hidden.shape[0]].to(hidden.device)
                mask = self.attention_mask[batch * size : batch * size + hidden.shape[0]].to(hidden.device)
                labels = ids.masked_fill(mask == 0, -100)
                with torch.no_grad():
                    loss = self.engine.model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
                count = int((labels[:, 1:] != -100).sum())
                total, tokens = total + float(loss) * count, tokens + count
        finally:
            for i, block in enumerate(originals):
                layout.blocks[i] = block
        return total, float(tokens)


class _Replay(nn.Module):
    """Stands in for a decoder block and returns fixed hidden states (the real blocks already ran); attribute reads
    the model makes of its blocks (an attention type) fall through to the block."""

    def __init__(self, block: nn.Module, hidden: torch.Tensor, tuple_output: bool) -> None:
        super().__init__()
        self.block = block
        self.hidden = hidden
        self.tuple_output = tuple_output

    def forward(self, *args, **kwargs):
        return (self.hidden,) if self.tuple_output else self.hidden

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)
