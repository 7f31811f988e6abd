"""Load a model and tokenizer for evaluation from a local directory, a Hub id or a GGUF file."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["load_model_and_tokenizer"]


def load_model_and_tokenizer(
    model_id_or_path: str | os.PathLike,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = torch.float32,
    **kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` in eval mode through :func:`hf_calibprune.hub.loading.load_model_and_tokenizer`.

    Args:
        model_id_or_path (`str`): local directory or Hub id.
        gguf_file (`str`, *optional*): a GGUF file inside that directory, dequantized on load.
        dtype (`torch.dtype` or `str`, *optional*, defaults to `torch.float32`).
        kwargs: more ``from_pretrained`` keywords.

    Raises:
        `CheckpointError`: when no model or no tokenizer can be loaded (evaluation needs both).
    """
    from ..hub.loading import load_model_and_tokenizer as load

    path = os.fspath(model_id_or_path)
    options = dict(kwargs)
    if gguf_file is not None:
        options["gguf_file"] = gguf_file
    if dtype is not None:
        options["dtype"] = dtype
    try:
        model, tokenizer = load(path, **options)
    except OSError as error:
        raise CheckpointError(
            f"Could not load a causal LM from '{path}'{f' (gguf_file={gguf_file})' if gguf_file else ''}: {error}. "
            "Pass a local model directory saved with save_pretrained, or a directory and --gguf-file."
        ) from error
    if tokenizer is None:
        raise CheckpointError(f"'{path}' has no tokenizer; evaluation needs one (save it with tokenizer.save_pretrained).")
    return model.eval(), tokenizer
