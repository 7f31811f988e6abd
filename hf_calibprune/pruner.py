"""``CalibratedPruner``: joins calibration data, the layer-by-layer engine and a pruning method."""

from __future__ import annotations

import logging
import time
from typing import Any

from torch import nn

from .config import PruningConfig
from .engine import EngineOptions, LayerwiseEngine
from .errors import ConfigError
from .methods import build_method
from .models import check_decoder_only
from .report import PruningReport
from .sparsity import LayerSparsity, owl_layer_sparsities, parse_pattern, uniform_layer_sparsities

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

    Example:

    ```python
    >>> config = PruningConfig(method="wanda", sparsity=0.5, calibration="calib.jsonl", num_samples=32, seq_len=512)
    >>> model = CalibratedPruner(config, tokenizer=tok).prune(model)
    >>> print(model.pruning_report.summary_table())
    ```
    """

    def __init__(self, config: PruningConfig, tokenizer: Any = None, *, progress: bool = True) -> None:
        if not isinstance(config, PruningConfig):
            raise ConfigError(f"CalibratedPruner takes a PruningConfig, not {type(config).__name__}.")
        self.config = config
        self.tokenizer = tokenizer
        self.progress = progress

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, config: PruningConfig, **load_kwargs: Any) -> nn.Module:
        """Load a model and its tokenizer (any ``from_pretrained`` keyword) and prune it; returns the model."""
        from .models.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_id_or_path, **load_kwargs)
        return cls(config, tokenizer=tokenizer).prune(model)

    def prune(self, model: nn.Module) -> nn.Module:
        """Prune ``model`` in place and attach ``model.pruning_report`` and ``model.pruning_config``.

        Returns the same model object.
        """
        config = self.config
        check_decoder_only(model)
        self._check_seq_len(model)
        method = build_method(config.method, config.method_options)
        pattern = parse_pattern(config.pattern)
        engine = LayerwiseEngine(
            model,
            EngineOptions(
                batch_size=config.batch_size,
                schedule=config.schedule,
                measure_error=config.measure_error,
                activation_device=config.activation_device,
                ignore=tuple(config.ignore),
                progress=self.progress,
            ),
        )
        block_names = [engine.layout.block_name(i) for i in range(len(engine.layout.blocks))]
        needs_data = method.needs != "none" or config.allocation == "owl"
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            samples = self._calibration_samples(model) if needs_data else None
            layer_sparsity: LayerSparsity = uniform_layer_sparsities(block_names, config.sparsity)
            if config.allocation == "owl":
                ratios = engine.outlier_ratios(engine.capture(samples.input_ids, samples.attention_mask), config.owl_threshold)
                layer_sparsity = owl_layer_sparsities(ratios, config.sparsity, config.owl_lambda)
            captured = engine.capture(samples.input_ids, samples.attention_mask) if method.needs != "none" else None
            layers, blocks = engine.prune(method, pattern, layer_sparsity, captured)
        finally:
            model.train(was_training)
        report = PruningReport.from_records(
            layers,
            blocks,
            method=config.method,
            pattern=config.pattern,
            requested_sparsity=config.sparsity,
            calibration=samples.fingerprint if samples is not None else None,
            layer_sparsity=layer_sparsity,
            seconds=time.perf_counter() - started,
            config=config.to_dict(),
        )
        model.pruning_config = config
        model.pruning_report = report
        logger.info("Pruned %d Linears to %.4f sparsity in %.1f s.", len(layers), report.overall_sparsity, report.seconds)
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

    def _check_seq_len(self, model: nn.Module) -> None:
        model_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        limit = next((getattr(model_config, a) for a in _POSITION_ATTRIBUTES if isinstance(getattr(model_config, a, None), int)), None)
        seq_len = getattr(self.config.calibration, "seq_len", None) or self.config.seq_len
        if limit is not None and seq_len > limit:
            raise ConfigError(
                f"`seq_len={seq_len}` is longer than the model's {limit} positions; pass seq_len={limit} or less."
            )
