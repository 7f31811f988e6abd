"""GPU scale benchmark, prepared for a machine with one CUDA GPU (not run on the CPU-only development machine).

A Llama-architecture model of about 1.1B parameters (TinyLlama's shape) is built from a config with random
weights (no download), in bfloat16, and pruned with Wanda and SparseGPT at 50 % in three placements:

* ``gpu``: the whole model on the GPU.
* ``onload``: the model stays in CPU RAM and ``PruningConfig(execution_device="cuda")`` brings one block at a
  time to the GPU (peak GPU memory: one block plus one batch of activations).
* ``offload``: the model saved once and loaded with an accelerate ``device_map`` that keeps embeddings and head
  on ``cuda:0`` and offloads half the blocks to CPU RAM and half to disk (``offload_folder``); the hooks
  onload each block for its forward and the pruned weights are written back to the offload maps.

Each run is a fresh process; it prints one JSON line with seconds, peak GPU memory
(``torch.cuda.max_memory_allocated``), peak RSS and a SHA-256 of all masks, then a Markdown table.

    python bench/gpu_scale.py --num-samples 32 --seq-len 1024   # about 7 minutes on an H100 (docs/benchmarks.md)
    python bench/gpu_scale.py --preset tiny --device cpu --placements onload offload   # smoke test on CPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRESETS = {
    # TinyLlama-1.1B's shape: 22 blocks, GQA 32/4 heads.
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    # Llama-3.2-3B's shape.
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=512),
}


def _build(preset: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**PRESETS[preset], tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def _mask_digest(model) -> str:
    from hf_calibprune.engine.offload import read_weight
    from hf_calibprune.models import find_decoder_layout, find_prunable_linears

    digest = hashlib.sha256()
    for block in find_decoder_layout(model).blocks:
        for name, module in find_prunable_linears(block).items():
            digest.update((read_weight(module, root=block, name=name) == 0).cpu().numpy().tobytes())
    return digest.hexdigest()


def worker(args: argparse.Namespace) -> dict:
    import torch

    from hf_calibprune import CalibratedPruner, PruningConfig

    dtype = getattr(torch, args.dtype)
    cuda = torch.device(args.device).type == "cuda"
    tokenizer = _char_tokenizer()
    execution_device = None
    with tempfile.TemporaryDirectory(prefix="gpu-scale-") as scratch:
        model = _build(args.preset, dtype)
        if args.placement == "gpu":
            model.to(args.device)
        elif args.placement == "onload":
            execution_device = args.device
        else:
            from transformers import AutoModelForCausalLM

            model.save_pretrained(Path(scratch) / "ckpt")
            del model
            layers = PRESETS[args.preset]["num_hidden_layers"]
            main = 0 if cuda else "cpu"
            device_map = {"model.embed_tokens": main, "model.norm": main, "model.rotary_emb": main, "lm_head": main}
            device_map.update({f"model.layers.{i}": ("cpu" if i < layers // 2 else "disk") for i in range(layers)})
            model = AutoModelForCausalLM.from_pretrained(
                Path(scratch) / "ckpt", dtype=dtype, device_map=device_map, offload_folder=Path(scratch) / "offload"
            ).eval()
        config = PruningConfig(
            method=args.method, sparsity=0.5, calibration=_texts(args.num_samples, args.seq_len), num_samples=args.num_samples,
            seq_len=args.seq_len, batch_size=args.batch_size, execution_device=execution_device,
            activation_device="cpu" if args.placement != "gpu" else None,
        )
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return {
            "preset": args.preset,
            "placement": args.placement,
            "method": args.method,
            "prune_s": round(seconds, 1),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "params_gb": round(sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits / 8 / 2**30, 2),
            "overall_sparsity": round(model.pruning_report.overall_sparsity, 4),
            "mask_sha256": _mask_digest(model),
        }


def _char_tokenizer():
    """A character-level tokenizer (ids below 128): a random-weight model needs no real vocabulary."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + list(string.printable[:95]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def _texts(num_samples: int, seq_len: int) -> list[str]:
    """Pseudo-random words (the same in every process): documents longer than ``seq_len`` characters."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    return [" ".join(rng.choice(words) for _ in range(seq_len // 2)) + "." for _ in range(num_samples + 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--placements", nargs="+", default=["gpu", "onload", "offload"],
                        choices=["gpu", "onload", "offload"])
    parser.add_argument("--output", help="Also write the JSON lines here.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--placement", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for method in args.methods:
        for placement in args.placements:
            command = [sys.executable, __file__, "--worker", "--method", method, "--placement", placement,
                       "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
                       "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
                       "--batch-size", str(args.batch_size)]
            result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
                rows.append({"method": method, "placement": placement, "error": result.stderr.strip().splitlines()[-1:]})
                continue
            line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
            rows.append(json.loads(line[len("RESULT ") :]))
            print(json.dumps(rows[-1]), flush=True)
    if args.output:
        Path(args.output).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print("| method | placement | prune s | peak GPU GB | peak RSS GB | weights GB | masks = gpu run |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['method']} | {row['placement']} | failed: {row['error']} | | | | |")
            continue
        reference = next((r.get("mask_sha256") for r in rows if r["method"] == row["method"] and r["placement"] == "gpu"), None)
        same = "n/a" if reference is None else ("yes" if row["mask_sha256"] == reference else "no")
        print(f"| {row['method']} | {row['placement']} | {row['prune_s']} | {row['peak_gpu_gb']} | {row['peak_rss_gb']} | "
              f"{row['params_gb']} | {same} |")


if __name__ == "__main__":
    main()
