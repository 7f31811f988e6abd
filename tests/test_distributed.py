"""Several real processes (gloo on CPU): sharded calibration, all-reduced statistics, identical weights, and a
checkpoint written by the main process only, equal to the single-process one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tokenizer, tiny_model
from hf_calibprune.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model("llama", num_hidden_layers=2).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _prune_args(model_dir, calibration_file, output, *extra) -> list[str]:
    return ["prune", "--model", str(model_dir), "--calibration", str(calibration_file), "--num-samples", "7",
            "--seq-len", "32", "--batch-size", "2", "--sparsity", "0.5", "--output", str(output), "--no-progress",
            *extra]


def _launch(launcher: list[str], args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([*launcher, "-m", "hf_calibprune", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0"]


def _assert_same_checkpoint(actual: Path, expected: Path) -> None:
    got, want = load_file(actual / "model.safetensors"), load_file(expected / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key] == 0, want[key] == 0), f"mask of {key} differs"
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"weights of {key} differ")
    got_report = json.loads((actual / "pruning_report.json").read_text())
    want_report = json.loads((expected / "pruning_report.json").read_text())
    assert got_report["calibration"] == want_report["calibration"], "the report keeps the global fingerprint"
    for got_layer, want_layer in zip(got_report["layers"], want_report["layers"], strict=True):
        assert got_layer["measured_sparsity"] == want_layer["measured_sparsity"]
        assert got_layer["reconstruction_error"] == pytest.approx(want_layer["reconstruction_error"], rel=1e-3, abs=1e-7)


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "sparsegpt"],
        pytest.param(["--method", "wanda", "--schedule", "one-pass", "--allocation", "owl", "--owl-lambda", "0.05"],
                     marks=pytest.mark.slow),
        pytest.param(["--method", "ria", "--pattern", "2:4", "--reconstruct", "admm"], marks=pytest.mark.slow),
    ],
)
def test_two_processes_prune_like_one(model_dir, calibration_file, tmp_path, extra):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert cli_main(_prune_args(model_dir, calibration_file, single, *extra)) == 0
    result = _launch(_torchrun(2), _prune_args(model_dir, calibration_file, sharded, *extra))
    _assert_same_checkpoint(sharded, single)
    # Rank 0 alone writes: a second writer would fail on the non-empty target or print twice.
    assert result.stdout.count("Saved dense checkpoint") == 1
    assert "Process 1 calibrates on samples 4-6 of 7" in result.stderr
    # The log reads the process group once it is up (accelerate's state says "0 of 1" on CPUs).
    assert "Process 0 of 2 (gloo backend)" in result.stderr and "Process 1 of 2 (gloo backend)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["sharded", "single"]
    _assert_execution(single, 1, [[0, 7]])
    _assert_execution(sharded, 2, [[0, 4], [4, 7]])


def test_two_processes_reconstruct_blocks_with_uneven_shards(model_dir, calibration_file, tmp_path):
    """Block-wise reconstruction steps in lockstep over processes holding 4 and 3 samples (one step without a
    sample on rank 1), averaging gradients: it finishes, keeps the 2:4 masks and lowers every block's error."""
    extra = ["--method", "wanda", "--pattern", "2:4", "--reconstruct", "block",
             "--reconstruct-option", "learning_rate=0.003", "--reconstruct-option", "epochs=2"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert cli_main(_prune_args(model_dir, calibration_file, single, *extra)) == 0
    _launch(_torchrun(2), _prune_args(model_dir, calibration_file, sharded, *extra))
    got, want = load_file(sharded / "model.safetensors"), load_file(single / "model.safetensors")
    pruned = [key for key in want if ".layers." in key and key.endswith("proj.weight")]
    assert len(pruned) == 14
    for key in pruned:
        zeros = got[key] == 0
        assert (zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all(), key
        if ".layers.0." in key:  # statistics over all 7 samples either way: the same masks
            assert torch.equal(zeros, want[key] == 0), key
    layers = json.loads((sharded / "pruning_report.json").read_text())["layers"]
    for layer in layers:
        info = layer["info"]
        assert info["block_reconstructed"] and info["block_error_after_reconstruct"] < info["block_error_before_reconstruct"]
    _assert_execution(sharded, 2, [[0, 4], [4, 7]])


def _assert_execution(checkpoint: Path, world_size: int, shares: list[list[int]]) -> None:
    """The report says how many processes ran, on which backend and devices, with which samples; the card too."""
    text = (checkpoint / "pruning_report.json").read_text()
    assert f'"world_size": {world_size}' in text
    execution = json.loads(text)["execution"]
    assert execution["backend"] == ("gloo" if world_size > 1 else None)
    assert [p["rank"] for p in execution["processes"]] == list(range(world_size))
    assert [p["samples"] for p in execution["processes"]] == shares
    assert all(p["devices"] == ["cpu"] for p in execution["processes"])
    rows = [line for line in (checkpoint / "README.md").read_text().splitlines() if line.startswith("| processes |")]
    assert len(rows) == 1 and rows[0].startswith(f"| processes | {world_size}")
    assert all(f"rank {rank}: samples {start}–{stop - 1} on cpu" in rows[0] for rank, (start, stop) in enumerate(shares))


@pytest.mark.slow
def test_accelerate_launch_gives_the_single_process_checkpoint(model_dir, calibration_file, tmp_path):
    single = tmp_path / "single"
    assert cli_main(_prune_args(model_dir, calibration_file, single, "--method", "sparsegpt")) == 0
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    # --cpu: accelerate 1.x starts one process unless given an MPI hostfile; --multi_gpu starts two through
    # torchrun, which use gloo on a machine without GPUs. The reports say which.
    for name, flags, shares in (("cpu", ["--cpu"], [[0, 7]]), ("multi", ["--multi_gpu"], [[0, 4], [4, 7]])):
        launcher = [*accelerate, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", *flags]
        _launch(launcher, _prune_args(model_dir, calibration_file, tmp_path / name, "--method", "sparsegpt"))
        _assert_same_checkpoint(tmp_path / name, single)
        _assert_execution(tmp_path / name, len(shares), shares)
