"""Locate decoder blocks and their Linears without per-architecture tables.

The blocks are the ``nn.ModuleList`` whose length is the config's layer count (searched inside
``model.get_decoder()`` first); prunable layers are every ``nn.Linear`` and GPT-2 style ``Conv1D``
inside a block. GPT-2's ``Conv1D`` stores its weight as ``[in, out]``; :func:`get_weight` and
:func:`set_weight` hide that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelStructureError

__all__ = [
    "DecoderLayout",
    "check_decoder_only",
    "find_decoder_layout",
    "find_prunable_linears",
    "get_weight",
    "is_prunable_linear",
    "set_weight",
]

_LAYER_COUNT_ATTRIBUTES = ("num_hidden_layers", "n_layer", "num_layers")


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - very old or trimmed transformers
        return None
    return Conv1D


def is_prunable_linear(module: nn.Module) -> bool:
    """``True`` for ``nn.Linear`` and transformers' ``Conv1D``."""
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def _is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]`` (a view; transposed for ``Conv1D``)."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write ``weight`` (``[out_features, in_features]``) into the module in its own dtype and device."""
    target = module.weight
    value = weight.t() if _is_conv1d(module) else weight
    with torch.no_grad():
        target.copy_(value.to(device=target.device, dtype=target.dtype))


@dataclass(frozen=True)
class DecoderLayout:
    """Where the decoder blocks are.

    Args:
        blocks (`nn.ModuleList`): the decoder blocks, in execution order.
        prefix (`str`): their module path in the model (``"model.layers"``), so block ``i`` is ``f"{prefix}.{i}"``.
    """

    blocks: nn.ModuleList
    prefix: str

    def block_name(self, index: int) -> str:
        return f"{self.prefix}.{index}"


def check_decoder_only(model: nn.Module) -> None:
    """Raise :class:`ModelStructureError` for encoder-decoder and encoder-only models."""
    config = getattr(model, "config", None)
    if config is None:
        raise ModelStructureError(
            f"{type(model).__name__} has no `config`; pass a transformers model such as AutoModelForCausalLM."
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelStructureError(
            f"{type(model).__name__} is an encoder-decoder model; hf_calibprune prunes decoder-only causal "
            "language models (load one with AutoModelForCausalLM)."
        )
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or _is_encoder_only(config):
        raise ModelStructureError(
            f"'{model_type}' ({type(model).__name__}) is not a decoder-only causal language model; hf_calibprune "
            "prunes models that AutoModelForCausalLM loads as decoders (Llama, Mistral, Qwen2, GPT-2, OPT, ...)."
        )


def _is_encoder_only(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def find_decoder_layout(model: nn.Module) -> DecoderLayout:
    """Find the decoder blocks of ``model``."""
    root = model.get_decoder() if hasattr(model, "get_decoder") else model
    root = root if root is not None else model
    root_prefix = next((name for name, module in model.named_modules() if module is root), "")
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    expected = next((getattr(config, a) for a in _LAYER_COUNT_ATTRIBUTES if isinstance(getattr(config, a, None), int)), None)
    candidates = [
        (name, module)
        for name, module in root.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and all(any(is_prunable_linear(m) for m in child.modules()) for child in module)
    ]
    if not candidates:
        raise ModelStructureError(
            f"found no decoder blocks (an nn.ModuleList of layers holding Linear layers) in {type(model).__name__}."
        )
    matching = [c for c in candidates if len(c[1]) == expected]
    name, blocks = (matching or sorted(candidates, key=lambda c: len(c[1]), reverse=True))[0]
    prefix = ".".join(part for part in (root_prefix, name) if part)
    return DecoderLayout(blocks=blocks, prefix=prefix)


def find_prunable_linears(block: nn.Module, ignore: tuple[str, ...] | list[str] = ()) -> dict[str, nn.Module]:
    """Every Linear/Conv1D in ``block`` by its name inside the block, except Mixture-of-Experts routers (which stay
    dense) and names containing an ``ignore`` entry."""
    from .experts import find_moe_blocks

    routers = {router.rsplit(".", 1)[0] for moe in find_moe_blocks(block) for router in moe.routers}
    return {
        name: module
        for name, module in block.named_modules()
        if is_prunable_linear(module) and name not in routers and not any(pattern in name for pattern in ignore)
    }
