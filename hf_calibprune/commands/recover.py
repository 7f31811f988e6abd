"""``hf-calibprune recover``: fine-tune a pruned checkpoint briefly while keeping every pruned weight zero."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "recover",
        help="Sparsity-preserving recovery fine-tuning of a pruned checkpoint.",
        description=(
            "Load a dense pruned checkpoint, fine-tune it on text keeping every pruned weight exactly zero (masked "
            "full fine-tune, or a LoRA / SHiRA adapter merged with the zeros intact) and write the merged model."
        ),
    )
    parser.add_argument("pruned_dir", metavar="PRUNED_DIR", help="Pruned model directory (save_pretrained output).")
    parser.add_argument("--data", required=True, help="Training text: a .txt file or a .jsonl file with a 'text' field.")
    parser.add_argument("--steps", type=int, required=True, help="Optimizer steps.")
    parser.add_argument("--output", required=True, help="Directory for the recovered (merged) checkpoint.")
    adapter = parser.add_mutually_exclusive_group()
    adapter.add_argument("--lora", action="store_true", help="Train a LoRA adapter and merge it, re-masking the zeros.")
    adapter.add_argument("--shira", action="store_true", help="Train a SHiRA adapter on kept weights only and merge it.")
    parser.add_argument("--lr", type=float, default=None, help="Learning rate (default 2e-4 with an adapter, else 2e-5).")
    parser.add_argument("--seq-len", type=int, default=256, help="Tokens per training block (default 256).")
    parser.add_argument("--batch-size", type=int, default=4, help="Blocks per micro-batch (default 4).")
    parser.add_argument("--grad-accum", type=int, default=1, help="Micro-batches per optimizer step (default 1).")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16) or SHiRA r (default 8).")
    parser.add_argument("--adapter-dir", default=None, help="Also save the trained adapter alone to this directory.")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision.")
    parser.add_argument("--seed", type=int, default=0, help="Training seed (default 0).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output directory.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..recovery.checkpoint import recover_checkpoint

    record = recover_checkpoint(
        args.pruned_dir,
        args.data,
        args.output,
        args.steps,
        overwrite=args.overwrite,
        lora=args.lora,
        shira=args.shira,
        learning_rate=args.lr,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        adapter_rank=args.rank,
        adapter_dir=args.adapter_dir,
        bf16=args.bf16,
        seed=args.seed,
    )
    print(json.dumps(record.to_dict(), indent=2, sort_keys=True))
    return 0
