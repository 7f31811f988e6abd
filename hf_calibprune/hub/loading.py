"""Load a model and its tokenizer with any ``from_pretrained`` keyword, as a plain (prunable, savable) model."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import CheckpointError, ConfigError

__all__ = ["load_model_and_tokenizer", "load_and_prune"]

logger = logging.getLogger(__name__)


def load_model_and_tokenizer(model_id_or_path: str | os.PathLike, **load_kwargs: Any) -> tuple[Any, Any]:
    """Load ``AutoModelForCausalLM`` and ``AutoTokenizer`` from one id or path, as a plain model.

    Loading itself is :func:`hf_calibprune.models.loading.load_model_and_tokenizer`; this adds what publishing
    needs: a clear error instead of a quantized (unsavable, untrainable) result, and a ``tokenizer`` keyword.

    Args:
        model_id_or_path (`str` or `os.PathLike`): Hub id or local directory.
        load_kwargs: any ``from_pretrained`` keyword (``dtype``, ``device_map``, ``revision``, ``gguf_file``, ...).
            ``tokenizer`` may pass a ready tokenizer (or another id/path to load it from). With ``gguf_file`` the
            weights are dequantized (``GgufConfig(dequantize=True)``): a GGUF loaded the default way is flagged
            quantized, and can be neither saved as a plain checkpoint nor fine-tuned.

    Returns:
        `tuple`: ``(model, tokenizer)``; the tokenizer is ``None`` when none could be loaded (methods without
        calibration data, such as magnitude, need none).
    """
    from transformers import AutoTokenizer, GgufConfig

    from ..config import PruningConfig
    from ..models.loading import load_model_and_tokenizer as _load

    load_kwargs = dict(load_kwargs)
    tokenizer = load_kwargs.pop("tokenizer", None)
    quantization_config = load_kwargs.get("quantization_config")
    if isinstance(quantization_config, PruningConfig):
        raise ConfigError(
            "Pass the PruningConfig as `config`, not as `quantization_config`, to CalibratedPruner.from_pretrained "
            "(it would prune twice)."
        )
    if load_kwargs.get("gguf_file") and quantization_config is not None:
        if not isinstance(quantization_config, GgufConfig):
            raise ConfigError(
                f"A GGUF file loads with GgufConfig(dequantize=True), not {type(quantization_config).__name__}; "
                "drop `quantization_config`."
            )
        if not getattr(quantization_config, "dequantize", False):
            logger.warning("Setting GgufConfig(dequantize=True): pruning needs plain weights.")
            quantization_config.dequantize = True
    model, loaded_tokenizer = _load(str(model_id_or_path), **load_kwargs)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise CheckpointError(
            f"'{model_id_or_path}' loaded as a quantized model ({getattr(model, 'quantization_method', 'unknown')}); "
            "pruning needs plain weights. Load it without `quantization_config`, or dequantize it first."
        )
    if tokenizer is None:
        tokenizer = loaded_tokenizer
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return model, tokenizer


def load_and_prune(model_id_or_path: str | os.PathLike, config: Any, **load_kwargs: Any) -> tuple[Any, Any]:
    """Load a model and tokenizer (see :func:`load_model_and_tokenizer`) and prune the model in place.

    Args:
        model_id_or_path (`str` or `os.PathLike`): Hub id or local directory.
        config (`PruningConfig`): how to prune.
        load_kwargs: any ``from_pretrained`` keyword, plus ``tokenizer``.

    Returns:
        `tuple`: ``(model, tokenizer)``, the model pruned, carrying ``pruning_config`` and ``pruning_report``.
    """
    from ..pruner import CalibratedPruner

    model, tokenizer = load_model_and_tokenizer(model_id_or_path, **load_kwargs)
    model = CalibratedPruner(config, tokenizer=tokenizer).prune(model)
    return model, tokenizer
