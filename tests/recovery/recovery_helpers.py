"""Helpers for the recovery tests: a tiny random Llama, 50 %-per-row pruning, tiny texts and a word-level tokenizer."""

from __future__ import annotations

import torch
from conftest import tiny_model
from torch import nn

TEXTS = [
    "the quick brown fox jumps over the lazy dog and the cat sleeps on the mat",
    "a small model learns to repeat the same short sentences again and again",
    "pruned weights must stay exactly zero while the kept weights are trained",
    "every mask holds through the optimizer step and the gradient accumulation",
] * 6


def tiny_llama(seed: int = 0, vocab_size: int = 128) -> nn.Module:
    return tiny_model("llama", seed=seed, vocab_size=vocab_size)


def prune_rows(model: nn.Module, skip: tuple[str, ...] = ("mlp.down_proj",)) -> list[str]:
    """Zero the smaller half of every row of each decoder Linear except names containing ``skip``."""
    pruned = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and ".layers." in name and not any(s in name for s in skip):
                weight = module.weight
                order = weight.abs().argsort(dim=1)[:, : weight.shape[1] // 2]
                weight.scatter_(1, order, 0.0)
                pruned.append(name)
    return pruned


def build_tokenizer(texts: list[str] = TEXTS, vocab_size: int = 128):
    """A real word-level fast tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<pad>", "</s>"])
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")




def lm_dataset(tokenizer, texts: list[str] = TEXTS, seq_len: int = 16):
    """A real ``datasets.Dataset`` of fixed-length LM blocks."""
    import datasets

    from hf_calibprune.recovery import build_lm_blocks

    blocks = build_lm_blocks(texts, tokenizer, seq_len).tolist()
    return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * seq_len] * len(blocks), "labels": blocks})


def mean_loss(model, dataset) -> float:
    """Mean LM loss of ``model`` over ``dataset`` (eval mode, no grad)."""
    batch = torch.tensor(dataset["input_ids"])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(model(input_ids=batch, labels=batch).loss)
    model.train(was_training)
    return loss


def train(model, dataset, tmp_path, steps: int = 30, callbacks=(), **arguments):
    """Run a real :class:`transformers.Trainer` for ``steps`` optimizer steps; returns the trainer."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    options = dict(
        output_dir=str(tmp_path / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        weight_decay=0.01,
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    options.update(arguments)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=dataset,
        data_collator=default_data_collator,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer
