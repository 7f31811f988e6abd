"""``CalibratedPruner``: joins calibration data, the layer-by-layer engine and a pruning method."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from torch import nn

from .config import PruningConfig
from .engine import EngineOptions, LayerwiseEngine
from .engine.accounting import DenseWeight, count_block_weights, dense_weights
from .engine.checkpointing import OUT_OF_MEMORY_ERRORS, BlockCheckpoint, model_fingerprint, out_of_memory_error
from .engine.distributed import (
    execution_record,
    init_distributed,
    is_main_process,
    process_index,
    resolve_device,
    shard_slice,
    world_size,
)
from .errors import ConfigError, ModelStructureError
from .methods import build_method
from .models import check_decoder_only
from .reconstruction import build_reconstructor
from .refinement import build_refiner
from .report import PruningReport
from .sparsity import LayerSparsity, owl_layer_sparsities, parse_pattern, uniform_layer_sparsities
from .structured import STRUCTURED_PATTERNS

__all__ = ["CalibratedPruner"]

logger = logging.getLogger(__name__)

_POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class CalibratedPruner:
    """Prunes decoder-only transformers models in place, block by block, with calibration data.

    Args:
        config (`PruningConfig`): what to prune and how.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): tokenizes calibration text; needed unless the method
            uses no calibration data (magnitude with uniform allocation).
        progress (`bool`, *optional*, defaults to `True`): show progress bars.
        checkpoint_dir (`str` or `os.PathLike`, *optional*): save progress here after every block (pruned weights,
            the next block's inputs, the records so far). Pruning the same model with the same config and
            calibration data again resumes at the first unfinished block and ends bit-identical to an uninterrupted
            run; anything else is refused with a :class:`CheckpointError` naming what differs. The directory is
            kept after success (a rerun then only restores); delete it, or call
            ``hf_calibprune.engine.checkpointing.remove_checkpoint(dir)``, once the pruned model is saved.

    Example:

    ```python
    >>> config = PruningConfig(method="wanda", sparsity=0.5, calibration="calib.jsonl", num_samples=32, seq_len=512)
    >>> model = CalibratedPruner(config, tokenizer=tok).prune(model)
    >>> print(model.pruning_report.summary_table())
    ```
    """

    def __init__(
        self,
        config: PruningConfig,
        tokenizer: Any = None,
        *,
        progress: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(config, PruningConfig):
            raise ConfigError(f"CalibratedPruner takes a PruningConfig, not {type(config).__name__}.")
        self.config = config
        self.tokenizer = tokenizer
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, config: PruningConfig, **load_kwargs: Any) -> nn.Module:
        """Load a model and its tokenizer (any ``from_pretrained`` keyword, plus ``tokenizer``: see
        :func:`hf_calibprune.models.loading.load_model_and_tokenizer`) and prune it; returns the model."""
        from .models.loading import load_model_and_tokenizer

        if isinstance(load_kwargs.get("quantization_config"), PruningConfig):
            raise ConfigError(
                "Pass the PruningConfig as `config`, not as `quantization_config`, to CalibratedPruner.from_pretrained "
                "(it would prune twice)."
            )
        model, tokenizer = load_model_and_tokenizer(model_id_or_path, **load_kwargs)
        return cls(config, tokenizer=tokenizer).prune(model)

    def prune(self, model: nn.Module) -> nn.Module:
        """Prune ``model`` in place and attach ``model.pruning_report`` and ``model.pruning_config``.

        Returns the same model object. Structured patterns (``"channels"``, ``"blocks"``) return it with heads,
        channels or blocks removed and its config rewritten.
        """
        if self.config.pattern in STRUCTURED_PATTERNS:
            from .structured_pruner import prune_structured

            return prune_structured(self, model)
        config = self.config
        check_decoder_only(model)
        method = build_method(config.method, config.method_options)
        needs_data = (
            method.needs != "none" or config.allocation == "owl" or config.refine is not None
            or config.reconstruct is not None
        )
        if needs_data:
            self._check_seq_len(model)
            self._check_vocabulary(model)
        pattern = parse_pattern(config.pattern)
        init_distributed()
        engine = LayerwiseEngine(
            model,
            EngineOptions(
                batch_size=config.batch_size,
                schedule=config.schedule,
                measure_error=config.measure_error,
                activation_device=config.activation_device,
                execution_device=config.execution_device,
                moe_calibration=config.moe_calibration,
                min_expert_tokens=config.min_expert_tokens,
                ignore=tuple(config.ignore),
                refiner=build_refiner(config.refine, config.refine_options) if config.refine else None,
                reconstructor=(
                    build_reconstructor(config.reconstruct, config.reconstruct_options) if config.reconstruct else None
                ),
                progress=self.progress and is_main_process(),
            ),
        )
        block_names = [engine.layout.block_name(i) for i in range(len(engine.layout.blocks))]
        dense = dense_weights(engine.layout, tuple(config.ignore))
        _check_unsupported(dense, config.strict)
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            samples = self._calibration_samples(model) if needs_data else None
            if samples is not None:
                _check_token_ids(samples.input_ids, model)
            checkpoint = self._open_checkpoint(model, engine, samples)
            shard = _process_shard(samples) if samples is not None else None
            layer_sparsity: LayerSparsity = uniform_layer_sparsities(block_names, config.sparsity)
            saved_sparsity = checkpoint.saved_layer_sparsity() if checkpoint is not None else None
            if saved_sparsity is not None:  # resuming: OWL's dense pass over every block is not repeated
                layer_sparsity = saved_sparsity
            elif config.allocation == "owl":
                ratios = engine.outlier_ratios(engine.capture(shard.input_ids, shard.attention_mask), config.owl_threshold)
                layer_sparsity = owl_layer_sparsities(ratios, config.sparsity, config.owl_lambda)
            captured = engine.capture(shard.input_ids, shard.attention_mask) if needs_data else None
            if checkpoint is not None:
                checkpoint.layer_sparsity = layer_sparsity
            layers, blocks = engine.prune(method, pattern, layer_sparsity, captured, checkpoint=checkpoint)
            share = shard_slice(samples.num_samples) if samples is not None else slice(0, 0)
            execution = execution_record((share.start, share.stop), _block_devices(engine.layout.blocks, config))
        except OUT_OF_MEMORY_ERRORS as error:
            raise out_of_memory_error(
                error,
                batch_size=config.batch_size,
                num_samples=config.num_samples,
                seq_len=config.seq_len,
                schedule=config.schedule,
                activation_device=config.activation_device,
                checkpoint_dir=self.checkpoint_dir,
            ) from error
        finally:
            model.train(was_training)
        counted = count_block_weights(engine.layout)
        report = PruningReport.from_records(
            layers,
            blocks,
            zeros=counted.zeros,
            total=counted.total,
            dense_weights=[weight.to_dict() for weight in dense],
            method=config.method,
            pattern=config.pattern,
            requested_sparsity=config.sparsity,
            calibration=samples.fingerprint if samples is not None else None,
            layer_sparsity=layer_sparsity,
            seconds=time.perf_counter() - started,
            config=config.to_dict(),
            execution=execution,
        )
        model.pruning_config = config
        model.pruning_report = report
        logger.info(
            "Pruned %d matrices to %.4f sparsity (%.4f over all block weights) in %.1f s.",
            len(layers),
            report.pruned_sparsity,
            report.overall_sparsity,
            report.seconds,
        )
        return model

    def _calibration_samples(self, model: nn.Module):
        from .calibration import build_calibration_samples

        config = self.config
        return build_calibration_samples(
            config.calibration,
            self.tokenizer,
            num_samples=config.num_samples,
            seq_len=config.seq_len,
            seed=config.seed,
            model=model,
        )

    def _open_checkpoint(self, model: nn.Module, engine: LayerwiseEngine, samples) -> BlockCheckpoint | None:
        if self.checkpoint_dir is None:
            return None
        fingerprint = {
            "config": self.config.to_dict(),
            "model": model_fingerprint(model, engine.layout),
            "calibration": samples.fingerprint if samples is not None else None,
        }
        return BlockCheckpoint(self.checkpoint_dir, fingerprint, len(engine.layout.blocks))

    def _check_vocabulary(self, model: nn.Module) -> None:
        if self.tokenizer is None:
            return
        size = _vocabulary_size(model)
        tokens = len(self.tokenizer) if hasattr(self.tokenizer, "__len__") else None
        if size is not None and tokens is not None and tokens > size:
            raise ConfigError(
                f"the tokenizer has {tokens} tokens but the model's vocabulary has {size} (config.vocab_size / "
                "input embeddings): they do not belong together. Pass the tokenizer saved with the model "
                "(AutoTokenizer.from_pretrained(<model>)), or resize the model's embeddings to the tokenizer first."
            )

    def _check_seq_len(self, model: nn.Module) -> None:
        model_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        limit = next((getattr(model_config, a) for a in _POSITION_ATTRIBUTES if isinstance(getattr(model_config, a, None), int)), None)
        seq_len = getattr(self.config.calibration, "seq_len", None) or self.config.seq_len
        if limit is not None and seq_len > limit:
            raise ConfigError(
                f"`seq_len={seq_len}` is longer than the model's {limit} positions; pass seq_len={limit} or less."
            )


def _vocabulary_size(model: nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) else None


def _check_token_ids(input_ids, model: nn.Module) -> None:
    """Out-of-range ids would index past the embeddings (a crash, or a device-side assert on CUDA)."""
    size = _vocabulary_size(model)
    if size is None or input_ids.numel() == 0:
        return
    largest = int(input_ids.max())
    if largest >= size or int(input_ids.min()) < 0:
        raise ConfigError(
            f"the calibration tokens hold id {largest}, outside the model's vocabulary of {size}: the tokenizer does "
            "not match the model. Pass the tokenizer saved with the model (AutoTokenizer.from_pretrained(<model>))."
        )


def _block_devices(blocks: list[nn.Module], config: PruningConfig) -> list[str]:
    """The devices the blocks ran on: an accelerate hook's execution device, else ``execution_device``, else where
    the block's weights are (the engine's placement rules)."""
    requested = resolve_device(config.execution_device)
    found: list[str] = []
    for block in blocks:
        hook = getattr(block, "_hf_hook", None)
        device = getattr(hook, "execution_device", None) if hook is not None else requested
        if device is None:
            parameter = next(block.parameters(), None)
            device = parameter.device if parameter is not None and parameter.device.type != "meta" else None
        name = str(torch.device(device)) if device is not None else None
        if name is not None and name not in found:
            found.append(name)
    return found


def _check_unsupported(dense: list[DenseWeight], strict: bool) -> None:
    """Warn (or, with ``strict``, raise) when blocks hold weights the engine cannot prune: they stay dense."""
    unsupported = [weight for weight in dense if weight.reason == "unsupported"]
    if not unsupported:
        return
    listed = ", ".join(f"{w.name} {tuple(w.shape)} ({w.numel:,} weights)" for w in unsupported[:10])
    more = f" and {len(unsupported) - 10} more" if len(unsupported) > 10 else ""
    message = (
        f"{len(unsupported)} block weights are of a kind hf_calibprune cannot prune and stay dense: {listed}{more}. "
        "The report counts them as they are."
    )
    if strict:
        raise ModelStructureError(
            f"{message} Pass strict=False to prune the rest, or ignore=[...] to keep them dense on purpose."
        )
    logger.warning(message)


def _process_shard(samples):
    """This process's share of the calibration samples under a multi-process launch (all of them otherwise).

    Statistics are all-reduced per block, so the shards together give the single-process statistics; the
    report keeps the fingerprint of the full set.
    """
    processes = world_size()
    if processes == 1:
        return samples
    if samples.num_samples < processes:
        raise ConfigError(
            f"{samples.num_samples} calibration samples cannot be shared by {processes} processes; pass "
            f"num_samples={processes} or more, or launch fewer processes."
        )
    part = shard_slice(samples.num_samples)
    logger.info("Process %d calibrates on samples %d-%d of %d.", process_index(), part.start, part.stop - 1, samples.num_samples)
    return type(samples)(samples.input_ids[part], samples.attention_mask[part], samples.fingerprint)
