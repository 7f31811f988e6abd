"""Helpers of the hub tests: tiny pruned Llama models, bit-exact comparison, a tiny GGUF file."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_model
from transformers import LlamaForCausalLM

import hf_calibprune.integrations.transformers_plugin  # noqa: F401 - registers the quantizer (as `import hf_calibprune` does)
from hf_calibprune import CalibratedPruner, PruningConfig

CALIBRATION = [
    "The quick brown fox jumps over the lazy dog. Pruning removes the weights that matter least. " * 4,
    "Calibration data decides which weights matter. Question: what is 3 + 4? Answer: 7. " * 4,
]


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> LlamaForCausalLM:
    return tiny_model("llama", dtype=dtype, seed=seed, **overrides)


def pruning_config(pattern: str = "unstructured", method: str = "magnitude") -> PruningConfig:
    return PruningConfig(
        method=method,
        sparsity=0.5 if pattern == "unstructured" else None,
        pattern=pattern,
        calibration=list(CALIBRATION),
        num_samples=2,
        seq_len=16,
    )


def pruned_llama(tokenizer, pattern: str = "unstructured", dtype: torch.dtype = torch.float32, method: str = "magnitude"):
    model = tiny_llama(dtype)
    return CalibratedPruner(pruning_config(pattern, method), tokenizer=tokenizer, progress=False).prune(model)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so equality means bit-identical (``-0.0`` and NaN payloads included)."""
    return tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)


def assert_same_bits(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert sorted(expected) == sorted(actual)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert actual[key].shape == tensor.shape, key
        assert torch.equal(bits(actual[key]), bits(tensor)), key


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny Llama GGUF file (float32 tensors, a placeholder vocabulary) written with the ``gguf`` library."""
    import gguf
    import numpy as np

    hidden, intermediate, layers, heads, kv_heads, head_dim, vocab = 32, 64, 2, 4, 2, 8, 128
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden)
    tensor("output_norm.weight", hidden)
    tensor("output.weight", vocab, hidden)
    for b in range(layers):
        tensor(f"blk.{b}.attn_norm.weight", hidden)
        tensor(f"blk.{b}.ffn_norm.weight", hidden)
        tensor(f"blk.{b}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{b}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{b}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{b}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{b}.ffn_gate.weight", intermediate, hidden)
        tensor(f"blk.{b}.ffn_up.weight", intermediate, hidden)
        tensor(f"blk.{b}.ffn_down.weight", hidden, intermediate)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
