"""Prune a tiny Llama, fine-tune it briefly with LoRA while keeping every pruned weight zero, and save it.

    python examples/recover.py

Runs in about a minute on a CPU with a tiny random model and a word-level tokenizer built on the spot; swap in
``AutoModelForCausalLM.from_pretrained(...)`` and real text for a real recovery run.
"""

from __future__ import annotations

import logging
import tempfile

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.recovery import check_masks, extract_masks, measured_sparsity, recover

TEXTS = [
    "pruning removes the weights that matter least for the calibration data",
    "a short fine tune wins back some of the quality that pruning cost",
    "the zeros must stay zeros so the sparse checkpoint keeps its speed",
] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128)
    )
    pruning = PruningConfig(method="wanda", sparsity=0.5, pattern="2:4", calibration=TEXTS, num_samples=8, seq_len=16)
    CalibratedPruner(pruning, tokenizer=tokenizer, progress=False).prune(model)
    masks = extract_masks(model)  # what must stay zero

    model = recover(model, tokenizer, TEXTS, steps=40, lora=True, learning_rate=5e-3, seq_len=16, batch_size=4)
    check_masks(model, masks)  # raises SparsityMaskError if a zero moved
    record = model.recovery_record
    print(f"loss {record.loss_before:.3f} -> {record.loss_after:.3f}; sparsity {measured_sparsity(model, masks):.3f}")

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)  # a plain dense checkpoint with exact zeros
        print("saved to", directory)


if __name__ == "__main__":
    main()
