"""2:4 speed on a GPU: a 2:4 checkpoint's Linears and whole-model prefill, semi-structured sparse against dense.

PyTorch's semi-structured sparse tensors (``torch.sparse.to_sparse_semi_structured``, CUTLASS/cuSPARSELt kernels)
need an NVIDIA GPU of compute capability 8.0 or newer (Ampere, Hopper). On such a GPU this script, within
--max-minutes, times (1) each distinct Linear shape of the decoder blocks, ``x @ Wᵀ`` for ``--tokens`` rows, dense
against sparse, and (2) the whole model's prefill of ``--batch × --seq-len`` tokens with every 2:4 block Linear
swapped for its sparse form, against the dense model; medians of --repeats CUDA-event timings, as ratios.

Without such a GPU it still runs end to end: it loads (or makes) the 2:4 model, checks that every block Linear
holds the 2:4 pattern, lists what would be converted, reports that no suitable GPU is present, and exits 0.

Speed does not depend on the weights' values, so ``--random-shapes`` builds a Llama of a named model's shapes with
random weights on the GPU and prunes it 2:4 by magnitude (no checkpoint to carry, nothing but torch and
transformers imported): how the kernels fare at the sizes people deploy, not only at SmolLM2's 576-wide layers.

    PYTHONPATH=$PWD python bench/sparse24_speed.py --checkpoint smollm2-sparsegpt-24 --max-minutes 5
    PYTHONPATH=$PWD python bench/sparse24_speed.py             # makes a magnitude 2:4 SmolLM2-135M in memory
    python bench/sparse24_speed.py --random-shapes llama-3-8b  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn


#: Llama shapes of public models (``--random-shapes``), their weights random.
RANDOM_SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=30, vocab_size=49152),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                       num_hidden_layers=32, vocab_size=128256),
}


def random_two_four_model(name: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """A Llama of ``RANDOM_SHAPES[name]`` with random weights on the GPU, every decoder Linear 2:4 by magnitude."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**RANDOM_SHAPES[name], max_position_embeddings=4096)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    groups = module.weight.view(module.out_features, -1, 4)
                    smallest = groups.abs().topk(2, dim=-1, largest=False).indices
                    groups.scatter_(-1, smallest, 0)
    return model, f"random {name} shapes (Llama), magnitude 2:4"


def load_model(args) -> tuple[nn.Module, str]:
    """The 2:4 model to measure: a saved checkpoint, or SmolLM2-135M pruned 2:4 by magnitude in memory."""
    from transformers import AutoModelForCausalLM

    if args.checkpoint:
        return AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval(), args.checkpoint
    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.models.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    config = PruningConfig(method="magnitude", pattern="2:4", calibration="self", num_samples=1, seq_len=16)
    return CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model.eval()), "SmolLM2-135M-Instruct, magnitude 2:4"


def two_four_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Linears whose weight holds at most 2 non-zeros in every 4 consecutive inputs (a pruned model's block
    Linears; embeddings and lm_head stay dense)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features % 4 == 0:
            groups = (module.weight.detach() != 0).reshape(module.out_features, -1, 4).sum(-1)
            if bool((groups <= 2).all()):
                found[name] = module
    return found


def gpu_reason() -> str | None:
    """Why semi-structured kernels cannot run here, or ``None`` when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is present"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}; 2:4 kernels need 8.0 or newer"
    return None


def cuda_median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_gpu(model: nn.Module, linears: dict[str, nn.Linear], args, deadline: float) -> dict:
    from torch.sparse import to_sparse_semi_structured

    dtype = getattr(torch, args.dtype)
    model = model.to("cuda", dtype)
    results = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "linears": [], "prefill": None}
    shapes = {}
    for name, module in linears.items():
        shapes.setdefault(tuple(module.weight.shape), name)
    for shape, name in shapes.items():
        if time.monotonic() > deadline:
            results["stopped"] = "--max-minutes reached during the Linear timings"
            return results
        weight = linears[name].weight.detach()
        sparse = to_sparse_semi_structured(weight)
        x = torch.randn(args.tokens, shape[1], device="cuda", dtype=dtype)
        dense_ms = cuda_median_ms(lambda: torch.nn.functional.linear(x, weight), args.repeats)
        sparse_ms = cuda_median_ms(lambda: torch.nn.functional.linear(x, sparse), args.repeats)
        results["linears"].append({"shape": list(shape), "example": name, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                                   "speedup": dense_ms / sparse_ms})
    if time.monotonic() > deadline:
        results["stopped"] = "--max-minutes reached before the prefill timing"
        return results
    ids = torch.randint(100, 20000, (args.batch, args.seq_len), device="cuda")

    def prefill():
        with torch.no_grad():
            model(ids, use_cache=False)

    dense_ms = cuda_median_ms(prefill, args.repeats)
    for module in linears.values():
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    sparse_ms = cuda_median_ms(prefill, args.repeats)
    results["prefill"] = {"batch": args.batch, "seq_len": args.seq_len, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                          "speedup": dense_ms / sparse_ms}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="A saved 2:4 checkpoint (dense format); default: magnitude 2:4 SmolLM2.")
    parser.add_argument("--max-minutes", type=float, default=5.0, help="Stop measuring after this long.")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=4096, help="Rows of x in the per-Linear timings.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument("--random-shapes", choices=sorted(RANDOM_SHAPES), help="Random weights of these shapes (GPU only).")
    args = parser.parse_args()
    deadline = time.monotonic() + 60 * args.max_minutes
    if args.random_shapes:
        if gpu_reason() is not None:
            print(f"Not timed: {gpu_reason()}; --random-shapes builds its model on the GPU.")
            return
        model, source = random_two_four_model(args.random_shapes, getattr(torch, args.dtype))
    else:
        model, source = load_model(args)
    linears = two_four_linears(model)
    result = {"model": source, "two_four_linears": len(linears), "torch": torch.__version__}
    print(f"{source}: {len(linears)} decoder-block Linears hold the 2:4 pattern.")
    if not linears:
        sys.exit("no 2:4 Linears found: prune with pattern='2:4' first.")
    reason = gpu_reason()
    if reason is not None:
        result["skipped"] = reason
        print(f"Not timed: {reason}. Semi-structured sparse kernels need an NVIDIA GPU of compute capability 8.0+; "
              "rerun this script there.")
    else:
        result.update(measure_gpu(model, linears, args, deadline))
        for row in result["linears"]:
            print(f"Linear {row['shape']}: dense {row['dense_ms']:.3f} ms, 2:4 {row['sparse_ms']:.3f} ms, "
                  f"{row['speedup']:.2f}x")
        if result.get("prefill"):
            p = result["prefill"]
            print(f"Prefill {p['batch']}x{p['seq_len']}: dense {p['dense_ms']:.1f} ms, 2:4 {p['sparse_ms']:.1f} ms, "
                  f"{p['speedup']:.2f}x")
        if result.get("stopped"):
            print(result["stopped"])
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
