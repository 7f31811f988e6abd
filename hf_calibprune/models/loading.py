"""Load a causal LM and its tokenizer from a Hub id or a local directory, GGUF files included."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, ModelStructureError

__all__ = ["load_model_and_tokenizer"]

logger = logging.getLogger(__name__)


def _dtype(value: Any) -> Any:
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    resolved = getattr(torch, str(value), None)
    if not isinstance(resolved, torch.dtype):
        raise ModelStructureError(f"`dtype={value!r}` is not a torch dtype; pass auto, float32, bfloat16 or float16.")
    return resolved


def _dequantizing(quantization_config: Any) -> Any:
    """The ``quantization_config`` a GGUF file loads with: ``GgufConfig(dequantize=True)``."""
    from transformers import GgufConfig

    if quantization_config is None:
        return GgufConfig(dequantize=True)
    if not isinstance(quantization_config, GgufConfig):
        raise ConfigError(
            f"A GGUF file loads with GgufConfig(dequantize=True), not {type(quantization_config).__name__}; "
            "drop `quantization_config`."
        )
    if not getattr(quantization_config, "dequantize", False):
        logger.warning("Setting GgufConfig(dequantize=True): pruning needs plain weights.")
        quantization_config.dequantize = True
    return quantization_config


def load_model_and_tokenizer(
    model_id_or_path: str | os.PathLike,
    tokenizer: Any = None,
    require_tokenizer: bool = False,
    **load_kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """``AutoModelForCausalLM`` and ``AutoTokenizer`` from one Hub id or local directory, as a plain model.

    Args:
        model_id_or_path (`str` or `os.PathLike`): Hub id or local directory.
        tokenizer (*optional*): a ready tokenizer, or another id/path to load it from; by default the tokenizer
            is loaded from ``model_id_or_path``.
        require_tokenizer (`bool`, *optional*, defaults to `False`): raise instead of returning ``None`` when no
            tokenizer can be loaded (evaluation needs one; magnitude pruning does not).
        load_kwargs: any ``from_pretrained`` keyword (``dtype``, ``device_map``, ``revision``, ``offload_folder``,
            ``gguf_file``, ...). A ``gguf_file`` is loaded dequantized (``GgufConfig(dequantize=True)``): loaded
            the default way it is flagged quantized, and can be neither saved as a plain checkpoint nor fine-tuned.

    Returns:
        `tuple`: ``(model, tokenizer)``; the tokenizer is ``None`` when none could be loaded.

    Raises:
        `CheckpointError`: when no causal LM loads from ``model_id_or_path``, when it loads quantized, or when
            ``require_tokenizer`` is set and there is no tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.fspath(model_id_or_path)
    load_kwargs = {k: v for k, v in load_kwargs.items() if v is not None}
    if "dtype" in load_kwargs:
        load_kwargs["dtype"] = _dtype(load_kwargs["dtype"])
    if "gguf_file" in load_kwargs:
        load_kwargs["quantization_config"] = _dequantizing(load_kwargs.get("quantization_config"))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
    except OSError as error:
        gguf = f" (gguf_file={load_kwargs['gguf_file']})" if "gguf_file" in load_kwargs else ""
        raise CheckpointError(
            f"Could not load a causal LM from '{path}'{gguf}: {error}. Pass a local model directory saved with "
            "save_pretrained, a Hub id, or a directory and its GGUF file."
        ) from error
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise CheckpointError(
            f"'{path}' loaded as a quantized model ({getattr(model, 'quantization_method', 'unknown')}); pruning "
            "needs plain weights. Load it without `quantization_config`, or dequantize it first."
        )
    if tokenizer is None:
        tokenizer_kwargs = {k: load_kwargs[k] for k in ("revision", "gguf_file", "token", "trust_remote_code") if k in load_kwargs}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
        except (OSError, ValueError):
            tokenizer = None
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    if tokenizer is None and require_tokenizer:
        raise CheckpointError(f"'{path}' has no tokenizer; save one there with tokenizer.save_pretrained.")
    return model, tokenizer
