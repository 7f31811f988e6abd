"""Shared fixtures: a character-level tokenizer and tiny random decoder-only models (no Hub access)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes weights that matter least. "
    "Calibration data decides which weights matter. Question: what is 3 + 4? Answer: 7. "
) * 8


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer of 99 tokens: every printable ASCII character plus four specials."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(string.printable[:95]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def tiny_config(model_type: str = "llama", **overrides):
    """A tiny random config of ``model_type`` whose vocabulary covers :func:`make_tokenizer`."""
    from transformers import AutoConfig

    common = dict(vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    per_type = {
        "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=256),
        "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                    max_position_embeddings=256),
        "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256),
    }
    default = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, head_dim=8)
    values = {**common, **per_type.get(model_type, default), **overrides}
    return AutoConfig.for_model(model_type, **values)


def tiny_model(model_type: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=dtype)
    return model.eval()


@pytest.fixture
def calibration_file(tmp_path: Path) -> Path:
    """A local JSONL calibration file with a ``text`` field."""
    import json

    path = tmp_path / "calib.jsonl"
    with path.open("w") as handle:
        for i in range(12):
            handle.write(json.dumps({"text": f"Sample {i}. " + TEXT[i * 7 :]}) + "\n")
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tokenizer) -> Path:
    """A saved tiny Llama with its tokenizer, loadable with ``from_pretrained``."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


#: Tiny Mixture-of-Experts configs: 4 experts, top-2 routing, every block MoE unless the architecture keeps
#: dense first blocks (DeepSeek-V3 keeps block 0 dense here, so both kinds of block are exercised).
MOE_OVERRIDES = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=24),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                      shared_expert_intermediate_size=40),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, intermediate_size=24),
    "deepseek_v3": dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, n_shared_experts=1,
                        first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=16, kv_lora_rank=16,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, num_key_value_heads=4,
                        num_hidden_layers=3),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=24, sliding_window=8),
}


def prune_command_config(*flags: str):
    """The ``PruningConfig`` that ``hf-calibprune prune --model m FLAGS`` builds (parser and conversion both real)."""
    from hf_calibprune.cli import build_parser
    from hf_calibprune.commands.prune import config_from_args

    return config_from_args(build_parser().parse_args(["prune", "--model", "m", *flags]))


def tiny_moe(model_type: str = "mixtral", seed: int = 0, **overrides):
    """A tiny random Mixture-of-Experts model of ``model_type`` (a key of :data:`MOE_OVERRIDES`)."""
    return tiny_model(model_type, seed=seed, **{**MOE_OVERRIDES[model_type], **overrides})


def kill_once_a_block_is_saved(victim, resume_dir: Path, timeout: float) -> None:
    """SIGKILL the pruning process ``victim`` as soon as its resume directory records a finished block."""
    import json
    import signal
    import time

    from hf_calibprune.engine.checkpointing import MANIFEST_NAME

    manifest = Path(resume_dir) / MANIFEST_NAME
    try:
        deadline = time.monotonic() + timeout
        while not (manifest.is_file() and json.loads(manifest.read_text())["completed_blocks"] >= 1):
            assert victim.poll() is None, victim.stderr.read().decode()
            assert time.monotonic() < deadline, "no block was saved in time"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()


def _mask_methods() -> list[str]:
    from hf_calibprune.methods import MASK_PATTERNS, METHODS

    return [name for name in METHODS.names() if set(MASK_PATTERNS) <= set(METHODS.get(name).patterns)]


#: Registered methods that prune with masks (every unstructured and N:M pattern), not whole structures.
MASK_METHODS = _mask_methods()
