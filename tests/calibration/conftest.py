"""Shared fixtures of the calibration tests: a tiny real tokenizer built offline, and fixture paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

_CORPUS = """
Question: Answer: So the answer is Premise: Hypothesis: Label: entailment neutral contradiction not_entailment
Sentence: Options: Article: Choices: True False The quick brown fox jumps over the lazy dog.
Natalia sold clips to her friends in April and then she sold half as many clips in May.
How many points did he score per round? A waiter had customers in his section.
0123456789 + - * / = ( ) . , ? ! ' " : ; # < > $ % ... and the of to in is was for on that with as by
"""


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_llama(tokenizer):
    """A tiny random LlamaForCausalLM whose vocabulary and special tokens match ``tokenizer``."""
    return tiny_model(
        "llama",
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) that prepends ``<bos>``; pad id 0, eos id 2."""
    return _build_tokenizer()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No Hub, no shared mirror: offline env vars set and the data dir pointed at an empty folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    monkeypatch.setenv("HF_CALIBPRUNE_DATA_DIR", str(empty))
    return empty
