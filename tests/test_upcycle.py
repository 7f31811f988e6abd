"""Upcycling a dense Llama into Mixtral: same logits, experts that are copies of the MLP, on every block."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from transformers import MixtralForCausalLM

from hf_calibprune.errors import ModelStructureError
from hf_calibprune.models.upcycle import max_logit_difference, upcycle_to_mixtral


def _inputs(batch: int = 3, seq: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 128, (batch, seq), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0  # one left-padded row
    return input_ids, attention_mask


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize(("num_experts", "top_k"), [(4, 2), (3, 1), (4, 4)])
def test_upcycled_logits_equal_dense(tied, num_experts, top_k):
    dense = tiny_model("llama", num_hidden_layers=3, tie_word_embeddings=tied)
    upcycled = upcycle_to_mixtral(dense, num_experts=num_experts, top_k=top_k, seed=0)
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = dense(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = upcycled(input_ids=input_ids, attention_mask=attention_mask).logits
    keep = attention_mask.bool()
    torch.testing.assert_close(actual[keep], expected[keep], rtol=1e-5, atol=1e-5)
    for implementation in (None, "eager"):
        assert max_logit_difference(dense, upcycled, input_ids, attention_mask, implementation) < 1e-5


def test_upcycled_layout_on_every_block():
    dense = tiny_model("llama", num_hidden_layers=3, tie_word_embeddings=False)
    before = {name: tensor.clone() for name, tensor in dense.state_dict().items()}
    upcycled = upcycle_to_mixtral(dense, num_experts=4, top_k=2, seed=0)
    config = upcycled.config
    assert isinstance(upcycled, MixtralForCausalLM)
    assert (config.num_local_experts, config.num_experts_per_tok, config.router_jitter_noise) == (4, 2, 0.0)
    assert config.rope_parameters == dense.config.rope_parameters
    assert config.rope_parameters is not dense.config.rope_parameters
    for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "rms_norm_eps", "vocab_size", "tie_word_embeddings", "hidden_act"):
        assert getattr(config, name) == getattr(dense.config, name), name
    size = dense.config.intermediate_size
    routers = []
    for index, (block, moe_block) in enumerate(zip(dense.model.layers, upcycled.model.layers, strict=True)):
        experts = moe_block.mlp.experts
        assert experts.gate_up_proj.shape == (4, 2 * size, config.hidden_size)
        assert experts.down_proj.shape == (4, config.hidden_size, size)
        for expert in range(4):
            assert torch.equal(experts.gate_up_proj[expert, :size], block.mlp.gate_proj.weight), (index, expert)
            assert torch.equal(experts.gate_up_proj[expert, size:], block.mlp.up_proj.weight), (index, expert)
            assert torch.equal(experts.down_proj[expert], block.mlp.down_proj.weight), (index, expert)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(getattr(moe_block.self_attn, name).weight, getattr(block.self_attn, name).weight)
        for name in ("input_layernorm", "post_attention_layernorm"):
            assert torch.equal(getattr(moe_block, name).weight, getattr(block, name).weight)
        assert moe_block.mlp.gate.weight.shape == (4, config.hidden_size)
        routers.append(moe_block.mlp.gate.weight)
    assert all(not torch.equal(a, b) for i, a in enumerate(routers) for b in routers[i + 1 :]), "routers differ"
    assert torch.equal(upcycled.lm_head.weight, dense.lm_head.weight)
    assert torch.equal(upcycled.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    assert torch.equal(upcycled.model.norm.weight, dense.model.norm.weight)
    # The upcycled model owns its tensors: the dense model is unchanged, and writing to one leaves the other.
    assert all(torch.equal(before[name], tensor) for name, tensor in dense.state_dict().items())
    with torch.no_grad():
        upcycled.model.layers[0].mlp.experts.down_proj[1].zero_()
        upcycled.model.layers[0].self_attn.q_proj.weight.zero_()
    assert torch.equal(upcycled.model.layers[0].mlp.experts.down_proj[0], dense.model.layers[0].mlp.down_proj.weight)
    assert torch.equal(dense.model.layers[0].self_attn.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"])


def test_router_is_seeded_and_routes_to_several_experts():
    dense = tiny_model("llama", num_hidden_layers=3)
    first, again = upcycle_to_mixtral(dense, seed=0), upcycle_to_mixtral(dense, seed=0)
    other = upcycle_to_mixtral(dense, seed=1)
    for a, b, c in zip(first.model.layers, again.model.layers, other.model.layers, strict=True):
        assert torch.equal(a.mlp.gate.weight, b.mlp.gate.weight)
        assert not torch.equal(a.mlp.gate.weight, c.mlp.gate.weight)
    # A random router spreads the tokens: the equality above is not won by sending everything to one expert.
    input_ids, _ = _inputs()
    with torch.no_grad():
        router_logits = first(input_ids=input_ids, output_router_logits=True).router_logits
    assert len(router_logits) == 3
    for logits in router_logits:
        assert len(set(logits.topk(2, dim=-1).indices.flatten().tolist())) == 4


def test_experts_implementation_is_transformers_default_and_restored():
    dense = tiny_model("llama")
    upcycled = upcycle_to_mixtral(dense)
    default = MixtralForCausalLM(upcycled.config.__class__(**upcycled.config.to_diff_dict())).config
    assert upcycled.config._experts_implementation == default._experts_implementation
    input_ids, attention_mask = _inputs()
    max_logit_difference(dense, upcycled, input_ids, attention_mask, experts_implementation="eager")
    assert upcycled.config._experts_implementation == default._experts_implementation


def test_upcycle_refuses_what_mixtral_cannot_reproduce():
    with pytest.raises(ModelStructureError, match="attention_bias=True"):
        upcycle_to_mixtral(tiny_model("llama", attention_bias=True))
    with pytest.raises(ModelStructureError, match="mlp_bias=True"):
        upcycle_to_mixtral(tiny_model("llama", mlp_bias=True))
    with pytest.raises(ModelStructureError, match="model_type='gpt2'"):
        upcycle_to_mixtral(tiny_model("gpt2"))
    with pytest.raises(ModelStructureError, match="top_k=3"):
        upcycle_to_mixtral(tiny_model("llama"), num_experts=2, top_k=3)
