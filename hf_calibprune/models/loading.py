"""Load a causal LM and its tokenizer from a Hub id or a local directory, GGUF files included."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelStructureError

__all__ = ["load_model_and_tokenizer"]


def _dtype(value: Any) -> Any:
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    resolved = getattr(torch, str(value), None)
    if not isinstance(resolved, torch.dtype):
        raise ModelStructureError(f"`dtype={value!r}` is not a torch dtype; pass auto, float32, bfloat16 or float16.")
    return resolved


def load_model_and_tokenizer(model_id_or_path: str, **load_kwargs: Any):
    """``AutoModelForCausalLM`` and ``AutoTokenizer`` from ``model_id_or_path``.

    Any ``from_pretrained`` keyword is passed on (``dtype``, ``device_map``, ``revision``, ``offload_folder``...).
    A ``gguf_file`` is loaded dequantized (``GgufConfig(dequantize=True)``), so the model is a plain model that
    can be pruned, saved and fine-tuned. A missing tokenizer is ``None``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs = {k: v for k, v in load_kwargs.items() if v is not None}
    if "dtype" in load_kwargs:
        load_kwargs["dtype"] = _dtype(load_kwargs["dtype"])
    tokenizer_kwargs = {k: load_kwargs[k] for k in ("revision", "gguf_file", "token", "trust_remote_code") if k in load_kwargs}
    if "gguf_file" in load_kwargs and "quantization_config" not in load_kwargs:
        from transformers import GgufConfig

        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(model_id_or_path, **load_kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id_or_path, **tokenizer_kwargs)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer
