"""Model surgery: remove attention heads, MLP channels, whole decoder blocks or whole experts, and rewrite the config.

This is the only module that edits a model's config. The result is an ordinary dense model whose config
(``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``num_hidden_layers``,
``layer_types``, ``attention_bias``/``mlp_bias``, the expert count) describes its new sizes, so ``save_pretrained``
writes a checkpoint that plain ``AutoModelForCausalLM.from_pretrained`` loads.

Blocks are described by the names of their projections (one small table, :data:`_ATTENTION` and :data:`_MLP`): a
structure is a list of ``(Linear, dim, indices)`` slices, so counting its parameters and cutting it out are the same
code for every architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ModelStructureError
from .experts import MoeBlock
from .layout import DecoderLayout

__all__ = [
    "AttentionParts",
    "BlockWidth",
    "MLPParts",
    "add_output_bias",
    "apply_width",
    "bias_route",
    "block_width",
    "cut_experts",
    "decoder_parameters",
    "remove_blocks",
    "set_expert_count",
    "text_config",
]

logger = logging.getLogger(__name__)

# Projection names → kind. Attention: split q/k/v (Llama, Mistral, Qwen2, Gemma), fused [q | k | v] (Phi-3), and
# GPT-NeoX's per-head interleaved fused projection, whose head size transformers derives from hidden_size (so its
# heads cannot be removed with an ordinary config).
_ATTENTION = (
    (("q_proj", "k_proj", "v_proj", "o_proj"), "split"),
    (("qkv_proj", "o_proj"), "fused"),
    (("query_key_value", "dense"), "fixed"),
)
_MLP = (
    (("gate_proj", "up_proj", "down_proj"), "gated"),
    (("gate_up_proj", "down_proj"), "fused"),
    (("dense_h_to_4h", "dense_4h_to_h"), "plain"),
)
# Config flags that give the projections of one part a bias (Llama family, Gemma).
_BIAS_FLAGS = {"attention": "attention_bias", "mlp": "mlp_bias"}
# Lists in a config that are not one entry per block even when their length matches.
_NOT_PER_LAYER = ("architectures",)
# How configs and modules spell the number of routed experts (Mixtral/gpt-oss, Qwen-MoE/OLMoE, DeepSeek-V3).
_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts")

Slice = tuple[nn.Linear, int, list[int]]


def text_config(model: nn.Module):
    """The config that holds the decoder's sizes (the text config of a multimodal model)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _find(block: nn.Module, table) -> tuple[str, nn.Module, dict[str, nn.Linear], str] | None:
    for prefix, module in block.named_modules():
        for names, kind in table:
            if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
                return prefix, module, {n: getattr(module, n) for n in names}, kind
    return None


@dataclass(frozen=True)
class AttentionParts:
    """A block's attention projections and head layout."""

    prefix: str
    module: nn.Module
    linears: dict[str, nn.Linear]
    kind: Literal["split", "fused", "fixed"]
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def output_name(self) -> str:
        return f"{self.prefix}.{'dense' if self.kind == 'fixed' else 'o_proj'}".lstrip(".")

    @property
    def output(self) -> nn.Linear:
        return self.linears["dense" if self.kind == "fixed" else "o_proj"]

    @property
    def num_groups(self) -> int:
        return self.num_kv_heads

    @property
    def group_width(self) -> int:
        """Input channels of the output projection per key/value group (its query heads × head_dim)."""
        return self.num_heads // self.num_kv_heads * self.head_dim

    def group_slices(self, group: int) -> list[Slice]:
        hd, per = self.head_dim, self.num_heads // self.num_kv_heads
        queries = list(range(group * per * hd, (group + 1) * per * hd))
        kv = list(range(group * hd, (group + 1) * hd))
        if self.kind == "split":
            l = self.linears
            return [(l["q_proj"], 0, queries), (l["k_proj"], 0, kv), (l["v_proj"], 0, kv), (l["o_proj"], 1, queries)]
        q_size, kv_size = self.num_heads * hd, self.num_kv_heads * hd
        fused = queries + [q_size + i for i in kv] + [q_size + kv_size + i for i in kv]
        return [(self.linears["qkv_proj"], 0, fused), (self.linears["o_proj"], 1, queries)]


@dataclass(frozen=True)
class MLPParts:
    """A block's MLP projections."""

    prefix: str
    module: nn.Module
    linears: dict[str, nn.Linear]
    kind: Literal["gated", "fused", "plain"]

    @property
    def output_name(self) -> str:
        return f"{self.prefix}.{'dense_4h_to_h' if self.kind == 'plain' else 'down_proj'}".lstrip(".")

    @property
    def output(self) -> nn.Linear:
        return self.linears["dense_4h_to_h" if self.kind == "plain" else "down_proj"]

    @property
    def num_channels(self) -> int:
        return self.output.in_features

    def channel_slices(self, channels: list[int]) -> list[Slice]:
        l = self.linears
        if self.kind == "gated":
            return [(l["gate_proj"], 0, channels), (l["up_proj"], 0, channels), (l["down_proj"], 1, channels)]
        if self.kind == "fused":
            both = list(channels) + [self.num_channels + c for c in channels]
            return [(l["gate_up_proj"], 0, both), (l["down_proj"], 1, channels)]
        return [(l["dense_h_to_4h"], 0, channels), (l["dense_4h_to_h"], 1, channels)]


@dataclass(frozen=True)
class BlockWidth:
    """The removable structures of one decoder block."""

    attention: AttentionParts
    mlp: MLPParts

    @property
    def heads_removable(self) -> bool:
        return self.attention.kind != "fixed"

    def group_parameters(self) -> int:
        return _slice_parameters(self.attention.group_slices(0)) if self.heads_removable else 0

    def channel_parameters(self) -> int:
        return _slice_parameters(self.mlp.channel_slices([0]))


def _slice_parameters(slices: list[Slice]) -> int:
    total = 0
    for linear, dim, indices in slices:
        per = linear.in_features + (linear.bias is not None) if dim == 0 else linear.out_features
        total += per * len(indices)
    return total


def block_width(model: nn.Module, block: nn.Module) -> BlockWidth:
    """Find the attention and MLP projections of ``block`` and its head layout.

    Raises:
        :class:`~hf_calibprune.errors.ModelStructureError`: a block whose attention or MLP is not one of the known
            projection layouts (separate or fused q/k/v, gated, fused gate/up or plain MLPs).
    """
    attention, mlp = _find(block, _ATTENTION), _find(block, _MLP)
    if attention is None or mlp is None:
        raise ModelStructureError(
            f"pattern='channels' needs attention projections (q/k/v/o_proj, qkv_proj or query_key_value) and MLP "
            f"projections (gate/up/down_proj, gate_up_proj or dense_h_to_4h) in each block; {type(block).__name__} "
            "has neither layout. Use pattern='blocks' or a mask pattern for this model."
        )
    config = text_config(model)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(attention[1], "head_dim", None) or getattr(config, "head_dim", None) or config.hidden_size // heads
    parts = AttentionParts(attention[0], attention[1], attention[2], attention[3], heads, kv_heads, int(head_dim))
    expected = heads * parts.head_dim
    if parts.kind != "fixed" and parts.output.in_features != expected:
        raise ModelStructureError(
            f"the attention output projection of {type(block).__name__} reads {parts.output.in_features} channels, "
            f"not num_attention_heads × head_dim = {expected}; this layout is not supported by pattern='channels'."
        )
    return BlockWidth(parts, MLPParts(*mlp))


def bias_route(model: nn.Module, width: BlockWidth, part: Literal["attention", "mlp"]) -> str | None:
    """How a compensation bias can be added to ``part``'s output projection.

    ``"existing"``: it has a bias. ``"config"``: it has none, but a config flag (``attention_bias``/``mlp_bias``)
    that every projection of the part follows can give it one. ``None``: the architecture cannot hold it.
    """
    parts = width.attention if part == "attention" else width.mlp
    if parts.output.bias is not None:
        return "existing"
    flag = getattr(text_config(model), _BIAS_FLAGS[part], None)
    if flag is False and all(linear.bias is None for linear in parts.linears.values()):
        return "config"
    return None


def added_bias_parameters(width: BlockWidth, part: Literal["attention", "mlp"]) -> tuple[int, int]:
    """``(fixed, per kept structure)`` parameters that turning on ``part``'s config bias flag adds to a block."""
    if part == "attention":
        rows = sum(len(i) for linear, dim, i in width.attention.group_slices(0) if dim == 0)
        return width.attention.output.out_features, rows
    rows = sum(len(i) for linear, dim, i in width.mlp.channel_slices([0]) if dim == 0)
    return width.mlp.output.out_features, rows


def add_output_bias(linear: nn.Linear, shift: torch.Tensor) -> None:
    """Add ``shift`` to ``linear``'s bias, creating a zero bias first where it has none."""
    with torch.no_grad():
        if linear.bias is None:
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device))
        linear.bias.add_(shift.to(linear.bias.device, linear.bias.dtype))


def _cut(linear: nn.Linear, dim: int, removed: set[int]) -> None:
    size = linear.weight.shape[dim]
    keep = torch.tensor([i for i in range(size) if i not in removed], dtype=torch.long, device=linear.weight.device)
    with torch.no_grad():
        linear.weight = nn.Parameter(linear.weight.index_select(dim, keep).clone(), requires_grad=linear.weight.requires_grad)
        if dim == 0 and linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.index_select(0, keep).clone(), requires_grad=linear.bias.requires_grad)
    if dim == 0:
        linear.out_features = int(keep.numel())
    else:
        linear.in_features = int(keep.numel())


def _remove(slices: list[Slice]) -> None:
    cuts: dict[tuple[int, int], tuple[nn.Linear, int, set[int]]] = {}
    for linear, dim, indices in slices:
        cuts.setdefault((id(linear), dim), (linear, dim, set()))[2].update(indices)
    for linear, dim, removed in cuts.values():
        if removed:
            _cut(linear, dim, removed)


def _set_int_attributes(module: nn.Module, values: dict[str, int]) -> None:
    for name, value in values.items():
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, value)


def apply_width(
    model: nn.Module,
    layout: DecoderLayout,
    removed: dict[int, tuple[list[int], list[int]]],
    added_bias: tuple[str, ...] = (),
    editing: Callable[[nn.Module], AbstractContextManager] = nullcontext,
) -> None:
    """Cut the removed key/value groups and MLP channels out of every block and rewrite the config.

    Args:
        model (`nn.Module`): the model, edited in place.
        layout (`DecoderLayout`): its decoder blocks.
        removed (`dict[int, tuple[list[int], list[int]]]`): block index → (key/value groups, MLP channels) to remove.
            Every block must lose the same counts, so that one config describes them all.
        added_bias (`tuple[str, ...]`): parts (``"attention"``, ``"mlp"``) whose output projections were given a
            compensation bias the architecture's config must now declare: every projection of that part gets one.
        editing (`Callable`, *optional*): a context manager entered around each block's edit (the engine's makes
            offloaded weights real tensors for it, one block at a time).
    """
    counts = {(len(groups), len(channels)) for groups, channels in removed.values()}
    if len(counts) > 1 or set(removed) != set(range(len(layout.blocks))):
        raise ModelStructureError(f"every block must lose the same number of structures; got {sorted(counts)}.")
    widths = [block_width(model, block) for block in layout.blocks]
    first = widths[0]
    channels_left = first.mlp.num_channels - len(removed[0][1])
    for index, (block, width) in enumerate(zip(layout.blocks, widths)):
        groups, channels = removed[index]
        with editing(block):
            slices = [s for g in groups for s in width.attention.group_slices(g)] + width.mlp.channel_slices(channels)
            _remove(slices)
            for part in added_bias:
                for linear in (width.attention if part == "attention" else width.mlp).linears.values():
                    if linear.bias is None:
                        add_output_bias(linear, torch.zeros(linear.out_features))
        heads_left = width.attention.num_heads - len(groups) * (width.attention.num_heads // width.attention.num_kv_heads)
        if groups:
            _set_int_attributes(
                width.attention.module,
                {"num_heads": heads_left, "num_attention_heads": heads_left,
                 "num_key_value_heads": width.attention.num_kv_heads - len(groups)},
            )
        _set_int_attributes(width.mlp.module, {"intermediate_size": channels_left})
    config = text_config(model)
    groups, channels = removed[0]
    if groups:
        per = first.attention.num_heads // first.attention.num_kv_heads
        config.num_attention_heads = first.attention.num_heads - per * len(groups)
        config.num_key_value_heads = first.attention.num_kv_heads - len(groups)
        config.head_dim = first.attention.head_dim  # no longer hidden_size // num_attention_heads
    if channels:
        config.intermediate_size = channels_left
    for part in added_bias:
        setattr(config, _BIAS_FLAGS[part], True)


def decoder_parameters(layout: DecoderLayout) -> int:
    """Parameters held by the decoder blocks (counted from the weights)."""
    return sum(p.numel() for p in layout.blocks.parameters())


def remove_blocks(model: nn.Module, layout: DecoderLayout, indices: list[int]) -> None:
    """Delete decoder blocks ``indices``, renumber the rest and update ``num_hidden_layers`` and per-layer lists.

    Attention modules keep a ``layer_idx`` that indexes the KV cache; it is renumbered to the new positions.
    Config lists with one entry per block (``layer_types``: which blocks use sliding-window attention) lose the
    removed entries, so each remaining block keeps its own attention type.
    """
    count = len(layout.blocks)
    drop = sorted(set(indices))
    if any(not 0 <= i < count for i in drop):
        raise ModelStructureError(f"block indices {drop} are outside 0..{count - 1}.")
    if len(drop) >= count:
        raise ModelStructureError(f"removing {len(drop)} of {count} blocks would leave none.")
    if not drop:
        return
    for index in reversed(drop):
        del layout.blocks[index]
    for position, block in enumerate(layout.blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    config = text_config(model)
    for key in list(config.to_dict()):
        value = getattr(config, key, None)
        if key not in _NOT_PER_LAYER and isinstance(value, (list, tuple)) and len(value) == count:
            setattr(config, key, type(value)(v for i, v in enumerate(value) if i not in drop))
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int) and getattr(config, name) == count:
            setattr(config, name, count - len(drop))


def _keep_rows(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return tensor.detach().index_select(0, keep.to(tensor.device)).clone()


def _cut_leading(module: nn.Module, count: int, keep: torch.Tensor) -> None:
    """Keep rows ``keep`` of every parameter and buffer of ``module`` (not its children) with ``count`` rows."""
    for name, parameter in list(module.named_parameters(recurse=False)):
        if parameter.dim() and parameter.shape[0] == count:
            setattr(module, name, nn.Parameter(_keep_rows(parameter, keep), requires_grad=parameter.requires_grad))
    for name, buffer in list(module.named_buffers(recurse=False)):
        if buffer is not None and buffer.dim() and buffer.shape[0] == count:
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, _keep_rows(buffer, keep), persistent=persistent)
    if isinstance(module, nn.Linear) and module.out_features == count:
        module.out_features = int(keep.numel())


def cut_experts(block: nn.Module, moe: MoeBlock, experts: list[int]) -> None:
    """Remove routed ``experts`` of ``moe`` in ``block``: their weights and biases (rows of fused 3-D parameters,
    or entries of an ``nn.ModuleList``) and their router rows (weight, bias and per-expert buffers such as
    DeepSeek-V3's ``e_score_correction_bias``). The expert counts the modules hold are updated; the config is
    rewritten by :func:`set_expert_count` once every block is cut. Shared experts are not touched.
    """
    drop = sorted(set(experts))
    if any(not 0 <= e < moe.num_experts for e in drop):
        raise ModelStructureError(f"expert indices {drop} are outside 0..{moe.num_experts - 1}.")
    if len(drop) >= moe.num_experts:
        raise ModelStructureError(f"removing {len(drop)} of {moe.num_experts} experts would leave none.")
    if not drop:
        return
    keep = torch.tensor([e for e in range(moe.num_experts) if e not in drop], dtype=torch.long)
    module = block.get_submodule(moe.name)
    routers = {path.rsplit(".", 1)[0] for path in moe.routers}
    touched = [module, module.experts] + [block.get_submodule(path) for path in sorted(routers)]
    if moe.fused is not None:
        _cut_leading(moe.fused.module, moe.num_experts, keep)
    else:
        module.experts = nn.ModuleList(module.experts[int(e)] for e in keep)
    for path in sorted(routers):
        _cut_leading(block.get_submodule(path), moe.num_experts, keep)
    for part in touched:
        _set_int_attributes(part, {n: len(keep) for n in _EXPERT_COUNTS if getattr(part, n, None) == moe.num_experts})


def set_expert_count(model: nn.Module, before: int, after: int) -> None:
    """Write the new number of routed experts per MoE block into the config (``num_local_experts``,
    ``num_experts`` or ``n_routed_experts``, whichever it uses) and into any module that still holds ``before``
    (a causal-LM head's ``num_experts`` for the load-balancing loss)."""
    config = text_config(model)
    for name in _EXPERT_COUNTS:
        if getattr(config, name, None) == before:
            setattr(config, name, after)
    for module in model.modules():
        _set_int_attributes(module, {n: after for n in _EXPERT_COUNTS if getattr(module, n, None) == before})
