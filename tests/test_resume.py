"""Resumable pruning: a run interrupted after some blocks and rerun ends bit-identical to an uninterrupted one.

Interruptions are real: an exception raised from a forward hook in the middle of the model (in process), and
``SIGKILL`` of a ``python -m hf_calibprune prune`` process (marked slow). Each test records what it injected
with ``record_property("reliability", ...)`` for ``tests/reliability_report.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TEXT, kill_once_a_block_is_saved, make_tokenizer, tiny_model
from hf_calibprune import CalibratedPruner, PruningConfig
from hf_calibprune.cli import main
from hf_calibprune.engine.checkpointing import MANIFEST_NAME, remove_checkpoint
from hf_calibprune.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
BLOCKS = 4


class Interrupted(Exception):
    """Stands for a crash: raised by a forward hook on a block in the middle of the model."""


def config(**overrides) -> PruningConfig:
    values = dict(method="sparsegpt", sparsity=0.5, calibration=[TEXT], num_samples=4, seq_len=32, batch_size=2)
    return PruningConfig(**{**values, **overrides})


def model(seed: int = 0, **overrides):
    return tiny_model("llama", seed=seed, **{"num_hidden_layers": BLOCKS, **overrides})


def prune(cfg, checkpoint_dir=None, net=None, tokenizer=None):
    net = net if net is not None else model()
    pruner = CalibratedPruner(cfg, tokenizer=tokenizer or make_tokenizer(), progress=False, checkpoint_dir=checkpoint_dir)
    return pruner.prune(net)


def interrupt_at(net, block: int, directory: Path):
    """Crash the next prune when it reaches ``block`` to prune it (the blocks before it are saved in ``directory``).

    Earlier calls (OWL's dense pass over every block) run normally.
    """

    def crash(module, args):
        if (directory / MANIFEST_NAME).is_file():
            raise Interrupted(f"crash in block {block}")

    return net.model.layers[block].register_forward_pre_hook(crash)


def count_calls(module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return calls


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8))]
    assert not different, f"tensors differ: {different}"


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted runs, by config key."""
    cache = {}

    def get(**overrides):
        key = json.dumps(overrides, sort_keys=True)
        if key not in cache:
            cache[key] = prune(config(**overrides))
        return cache[key]

    return get


@pytest.mark.parametrize(
    "overrides, crash_block",
    [
        (dict(method="sparsegpt"), 2),
        (dict(method="wanda", schedule="one-pass"), 2),
        (dict(method="wanda", allocation="owl", owl_lambda=0.1), 3),
        (dict(method="magnitude"), 2),  # no activations: weights only
        (dict(method="wanda", pattern="2:4", reconstruct="admm"), 2),
        (dict(method="wanda", pattern="2:4", reconstruct="block"), 2),  # the dense stream is saved beside
    ],
    ids=["sparsegpt", "wanda-one-pass", "wanda-owl", "magnitude", "wanda-admm", "wanda-block"],
)
def test_interrupted_run_resumes_bit_identical(tmp_path, reference, record_property, overrides, crash_block):
    how = "a failed write stops the run" if overrides["method"] == "magnitude" else "an exception stops the run"
    record_property("reliability", {"kind": "fault", "case": f"{how} in block {crash_block} of {BLOCKS} "
                                    f"({', '.join(f'{k}={v}' for k, v in overrides.items())}); rerun on a fresh model",
                                    "expect": "finished blocks restored, not rerun; weights bit-identical"})
    cfg = config(**overrides)
    first = model()
    if overrides["method"] == "magnitude":  # runs no block: a directory where the crash block's file goes
        obstacle = tmp_path / f"block-{crash_block:05d}.safetensors"
        obstacle.mkdir(parents=True)
        crash = OSError
    else:
        interrupt_at(first, crash_block, tmp_path)
        crash = Interrupted
    with pytest.raises(crash):
        prune(cfg, tmp_path, first)
    assert manifest(tmp_path)["completed_blocks"] == crash_block
    if overrides["method"] == "magnitude":
        obstacle.rmdir()

    second = model()
    skipped = count_calls(second.model.layers[crash_block - 1].mlp)
    resumed = prune(cfg, tmp_path, second)

    assert skipped[0] == 0, "a finished block ran again"
    assert_bit_identical(resumed.state_dict(), reference(**overrides).state_dict())
    report = resumed.pruning_report
    assert [b.index for b in report.blocks] == list(range(BLOCKS))
    assert len(report.layers) == 7 * BLOCKS
    assert report.overall_sparsity == pytest.approx(reference(**overrides).pruning_report.overall_sparsity)
    assert manifest(tmp_path)["completed_blocks"] == BLOCKS
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".", "activations-"))], "stale files left"


def test_finished_checkpoint_restores_without_pruning_and_can_be_removed(tmp_path, reference, record_property):
    record_property("reliability", {"kind": "fault", "case": "rerun after a finished run (e.g. the save failed)",
                                    "expect": "weights restored, no block pruned again"})
    prune(config(), tmp_path)
    again = model()
    calls = [count_calls(block.mlp) for block in again.model.layers[1:]]
    assert_bit_identical(prune(config(), tmp_path, again).state_dict(), reference().state_dict())
    assert [c[0] for c in calls] == [0] * (BLOCKS - 1)
    remove_checkpoint(tmp_path)
    assert not tmp_path.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(config=dict(sparsity=0.6)), r"the pruning config differs: sparsity \(checkpoint: 0\.5, now: 0\.6\)"),
        (dict(config=dict(method="wanda")), r"method \(checkpoint: \"sparsegpt\", now: \"wanda\"\)"),
        (dict(config=dict(seed=3)), r"seed \(checkpoint: 0, now: 3\).*calibration tokens differ"),
        (dict(config=dict(calibration=[TEXT[::-1]])), r"the calibration tokens differ \(same sizes and seed"),
        (dict(model=dict(seed=1)), r"the model's weights differ"),
        (dict(model=dict(rms_norm_eps=1e-3)), r"the model's config.json differs: rms_norm_eps"),
        (dict(model=dict(num_hidden_layers=3)), r"written for a model with 4 decoder blocks"),
        (dict(model=dict(dtype=torch.bfloat16)), r"parameter names, shapes or dtypes differ"),
    ],
    ids=["sparsity", "method", "seed", "calibration", "weights", "model-config", "blocks", "dtype"],
)
def test_a_different_run_refuses_to_resume(tmp_path, record_property, change, message):
    record_property("reliability", {"kind": "bad-input", "case": f"resume with a different {', '.join(change)}: "
                                    f"{json.dumps(change, default=str)}", "expect": "CheckpointError naming the difference"})
    first = model()
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        prune(config(), tmp_path, first)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model_args = dict(change.get("model", {}))
    net = model(**model_args)
    with pytest.raises(CheckpointError, match=message):
        prune(config(**change.get("config", {})), tmp_path, net)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "a refused resume changed the checkpoint"
    assert not any((m.weight == 0).any() for m in net.modules() if isinstance(m, torch.nn.Linear)), "pruning started"


def test_a_model_differing_only_in_its_last_block_is_refused(tmp_path, record_property):
    record_property("reliability", {"kind": "bad-input", "case": "resume with a model whose last block alone differs "
                                    "(same config, same first blocks)", "expect": "CheckpointError naming the block"})
    first = model()
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        prune(config(), tmp_path, first)
    other = model()
    with torch.no_grad():  # one weight of the last block's down projection, a fine-tune's scale of change
        other.model.layers[BLOCKS - 1].mlp.down_proj.weight[0, 0] += 1e-3
    with pytest.raises(CheckpointError, match=rf"the model's weights differ \(blocks model\.layers\.{BLOCKS - 1} do not"):
        prune(config(), tmp_path, other)
    assert not any((m.weight == 0).any() for m in other.modules() if isinstance(m, torch.nn.Linear)), "pruning started"


def test_resume_with_a_smaller_batch_size_continues(tmp_path, caplog, record_property):
    """What the out-of-memory advice says: rerun with a smaller batch_size keeps the finished blocks."""
    record_property("reliability", {"kind": "fault", "case": "interrupted, resumed with batch_size 2 -> 1",
                                    "expect": "finished blocks kept, warning that results are not bit-identical"})
    first = model()
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        prune(config(), tmp_path, first)
    second = model()
    skipped = count_calls(second.model.layers[1].mlp)
    with caplog.at_level(logging.WARNING):
        resumed = prune(config(batch_size=1), tmp_path, second)
    assert skipped[0] == 0
    assert "batch_size (checkpoint: 2, now: 1)" in caplog.text
    assert len(resumed.pruning_report.layers) == 7 * BLOCKS
    for record in resumed.pruning_report.layers:
        assert record.measured_sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("damage", ["truncated-manifest", "missing-weights", "truncated-activations", "foreign-json"])
def test_a_damaged_checkpoint_is_refused_with_a_fix(tmp_path, record_property, damage):
    record_property("reliability", {"kind": "bad-input", "case": f"resume checkpoint damaged: {damage}",
                                    "expect": "CheckpointError before pruning"})
    first = model()
    interrupt_at(first, 2, tmp_path)
    with pytest.raises(Interrupted):
        prune(config(), tmp_path, first)
    path = tmp_path / MANIFEST_NAME
    if damage == "truncated-manifest":
        path.write_bytes(path.read_bytes()[:100])
        message = "corrupted or truncated"
    elif damage == "missing-weights":
        (tmp_path / "block-00001.safetensors").unlink()
        message = r"block 1's weights \(block-00001.safetensors\) is missing"
    elif damage == "truncated-activations":
        activations = next(tmp_path.glob("activations-*"))
        activations.write_bytes(activations.read_bytes()[:50])
        message = "corrupted or truncated"
    else:
        path.write_text(json.dumps({"hello": "world"}))
        message = "is not a hf_calibprune resume manifest"
    net = model()
    with pytest.raises(CheckpointError, match=message):
        prune(config(), tmp_path, net)


# --------------------------------------------------------------------------------------------------
# The command line, killed for real
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    model().save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    (directory / "calib.txt").write_text(TEXT)
    return directory


def cli_args(saved_model: Path, output: Path, resume: Path | None) -> list[str]:
    args = ["prune", "--model", str(saved_model), "--method", "sparsegpt", "--sparsity", "0.5",
            "--calibration", str(saved_model / "calib.txt"), "--num-samples", "4", "--seq-len", "32",
            "--batch-size", "2", "--no-progress", "--output", str(output)]
    return args + (["--resume-dir", str(resume)] if resume is not None else [])


def safetensors_of(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    assert tensors, f"no weights in {directory}"
    return tensors


def test_cli_resume_dir_is_removed_after_the_output_is_saved(tmp_path, saved_model):
    resume, output = tmp_path / "resume", tmp_path / "out"
    assert main(cli_args(saved_model, output, resume)) == 0
    assert (output / "config.json").is_file()
    assert not resume.exists()
    weights = safetensors_of(output)
    assert float((weights["model.layers.3.mlp.up_proj.weight"] == 0).float().mean()) == 0.5


@pytest.mark.slow
def test_cli_killed_with_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, saved_model, record_property):
    record_property("reliability", {"kind": "fault", "case": "`python -m hf_calibprune prune --resume-dir` killed "
                                    "with SIGKILL after >= 1 saved block, rerun with the same arguments",
                                    "expect": "output safetensors bit-identical to an uninterrupted run"})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "hf_calibprune"]
    resume, output, plain = tmp_path / "resume", tmp_path / "out", tmp_path / "plain"
    uninterrupted = subprocess.Popen(command + cli_args(saved_model, plain, None), env=env, cwd=tmp_path,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    slow = {**env, "HF_CALIBPRUNE_TEST_BLOCK_DELAY": "30"}  # the kill lands while block 1 of 4 is committed
    victim = subprocess.Popen(command + cli_args(saved_model, output, resume), env=slow, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_once_a_block_is_saved(victim, resume, timeout=240)
    done = manifest(resume)["completed_blocks"]
    assert 1 <= done < BLOCKS
    assert not output.exists()

    rerun = subprocess.run(command + cli_args(saved_model, output, resume), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"continuing at model.layers.{done}" in rerun.stderr
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read().decode()
    assert_bit_identical(safetensors_of(output), safetensors_of(plain))
    assert not resume.exists(), "the resume directory is removed once the output is saved"
