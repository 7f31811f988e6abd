"""Fixtures for the evaluation tests: a tiny byte-level BPE tokenizer and a tiny random Llama model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import tiny_model

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("HF_CALIBPRUNE_DATA_DIR", REPO / ".." / "shared" / "data")).resolve()

_CORPUS = [
    "Question: Natalia sold clips to 48 of her friends in April. How many clips?\nAnswer: 72",
    "Premise: A person on a horse jumps over a broken down airplane.\nHypothesis: A person is outdoors.\nLabel: entailment",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 , . $ #",
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor .",
] * 20


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def build_model(vocab_size: int, seed: int = 0):
    return tiny_model("llama", seed=seed, vocab_size=vocab_size, eos_token_id=0, bos_token_id=None, pad_token_id=None)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer):
    return build_model(len(tokenizer))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def small_data_dir(tmp_path) -> Path:
    """A data mirror with a few rows of WikiText-2, C4 and GSM8K in their raw schemas."""
    root = tmp_path / "data"
    wiki = [{"text": ""}, {"text": " = Robert Boulter = \n"}, {"text": ""}]
    wiki += [{"text": f" Robert Boulter is an English actor number {i} . He played in {i + 3} films . \n"} for i in range(60)]
    write_jsonl(root / "wikitext2" / "test.shared.jsonl", wiki)
    c4 = [{"text": f"Beginners BBQ class {i} taking place in Missoula! " * 8, "timestamp": "", "url": ""} for i in range(40)]
    write_jsonl(root / "c4" / "c4-train.00000-of-01024.docs000-799.jsonl", c4)
    train = [
        {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
         "answer": f"Tom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
        for i in range(40)
    ]
    write_jsonl(root / "gsm8k" / "train.jsonl", train)
    write_jsonl(root / "gsm8k" / "test.shared.jsonl", train[:10])
    return root
