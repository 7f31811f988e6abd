"""Upcycle a dense Llama model into a Mixtral Mixture-of-Experts model whose logits equal the dense model's.

Every expert is a copy of the dense MLP and the router is random. Mixtral normalises the top-k routing weights to
sum to 1, so each token's MoE output is ``sum_k w_k * MLP(x) = MLP(x)``: an MoE checkpoint of known quality that
can be built offline, used by ``bench/moe_benchmark.py`` to compare MoE pruning against pruning the dense model.
"""

from __future__ import annotations

import torch

from ..errors import ModelStructureError

__all__ = ["upcycle_to_mixtral", "max_logit_difference"]

# Llama config fields with no Mixtral counterpart; upcycling is exact only when they hold these values.
_UNSUPPORTED = {"attention_bias": False, "mlp_bias": False}


def _mixtral_config(dense_config, num_experts: int, top_k: int):
    from transformers import MixtralConfig

    for field, supported in _UNSUPPORTED.items():
        value = getattr(dense_config, field, supported)
        if value not in (supported, None):
            raise ModelStructureError(
                f"Cannot upcycle a Llama model with `{field}={value!r}`: Mixtral has no such option; "
                f"only models with `{field}={supported!r}` upcycle exactly."
            )
    copied = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
        "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "attention_dropout",
    )
    values = {name: getattr(dense_config, name) for name in copied}
    # transformers 5 keeps rope_theta inside rope_parameters; copy the dict so the two configs stay independent.
    values["rope_parameters"] = dict(dense_config.rope_parameters)
    return MixtralConfig(
        **values, sliding_window=None, num_local_experts=num_experts, num_experts_per_tok=top_k, router_jitter_noise=0.0
    )


def upcycle_to_mixtral(model: torch.nn.Module, num_experts: int = 4, top_k: int = 2, seed: int = 0):
    """A ``MixtralForCausalLM`` whose experts are copies of ``model``'s MLPs, with a random router.

    Attention, norms, embeddings and the LM head are copied; in block ``i`` every expert ``e`` gets
    ``experts.gate_up_proj[e] = cat([gate_proj.weight, up_proj.weight])`` and ``experts.down_proj[e] =
    down_proj.weight``; the router weight is drawn from ``N(0, initializer_range)`` with ``seed``. As Mixtral
    normalises the top-k routing weights, the logits equal the dense model's up to float rounding (check with
    :func:`max_logit_difference`). The experts implementation is the one transformers chooses by default.

    Args:
        model (`torch.nn.Module`): a dense ``LlamaForCausalLM`` (left unchanged).
        num_experts (`int`, *optional*, defaults to 4): experts per block.
        top_k (`int`, *optional*, defaults to 2): experts each token is routed to.
        seed (`int`, *optional*, defaults to 0): seed of the router weights.

    Returns:
        `MixtralForCausalLM`: a new model with ``model``'s dtype, device, attention implementation and train/eval mode.

    Raises:
        `ModelStructureError`: when ``model`` is not a Llama model Mixtral can reproduce, or ``top_k`` is not in
            ``[1, num_experts]``.
    """
    from transformers import MixtralForCausalLM

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        raise ModelStructureError(
            f"upcycle_to_mixtral takes a Llama-architecture causal LM, got model_type="
            f"{getattr(config, 'model_type', None)!r}; load a LlamaForCausalLM such as SmolLM2."
        )
    if not 1 <= top_k <= num_experts:
        raise ModelStructureError(
            f"`top_k={top_k}` must be between 1 and `num_experts={num_experts}`; pass e.g. num_experts=4, top_k=2."
        )
    parameter = next(model.parameters())
    upcycled = MixtralForCausalLM._from_config(
        _mixtral_config(config, num_experts, top_k), dtype=parameter.dtype,
        attn_implementation=config._attn_implementation,
    )
    dense = model.state_dict()
    state = {name: tensor for name, tensor in dense.items() if ".mlp." not in name}
    generator = torch.Generator().manual_seed(seed)
    for index in range(config.num_hidden_layers):
        prefix = f"model.layers.{index}.mlp."
        gate_up = torch.cat([dense[prefix + "gate_proj.weight"], dense[prefix + "up_proj.weight"]])
        state[prefix + "experts.gate_up_proj"] = gate_up.expand(num_experts, -1, -1)
        state[prefix + "experts.down_proj"] = dense[prefix + "down_proj.weight"].expand(num_experts, -1, -1)
        router = torch.randn(num_experts, config.hidden_size, generator=generator) * config.initializer_range
        state[prefix + "gate.weight"] = router.to(parameter.dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = upcycled.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise ModelStructureError(
            f"The Llama model does not map onto Mixtral: missing {missing}, unexpected {unexpected}. "
            "Only plain Llama blocks (attention, gated MLP, two RMSNorms) upcycle."
        )
    return upcycled.to(parameter.device).train(model.training)


@torch.no_grad()
def max_logit_difference(
    dense: torch.nn.Module,
    upcycled: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    experts_implementation: str | None = None,
) -> float:
    """The largest absolute difference between the two models' logits on ``input_ids`` (padding excluded).

    Args:
        dense (`torch.nn.Module`): the dense model.
        upcycled (`torch.nn.Module`): its upcycled MoE model.
        input_ids (`torch.Tensor`): token ids ``[batch, seq]``.
        attention_mask (`torch.Tensor`, *optional*): ``1`` on real tokens; padded positions are not compared.
        experts_implementation (`str`, *optional*): run the MoE model with this experts implementation (e.g.
            ``"eager"``) and restore its own one after, even on error; by default its own is used.

    Returns:
        `float`: ``max |logits_dense - logits_upcycled|`` over the compared positions.
    """
    previous = upcycled.get_experts_implementation()
    if experts_implementation is not None:
        upcycled.set_experts_implementation(experts_implementation)
    try:
        moe_logits = upcycled(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        upcycled.set_experts_implementation(previous)
    difference = (dense(input_ids=input_ids, attention_mask=attention_mask).logits.float() - moe_logits.float()).abs()
    if attention_mask is not None:
        difference = difference[attention_mask.bool()]
    return difference.max().item()
