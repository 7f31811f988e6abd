"""push_to_hub end to end against a local fake of the Hub API (the real huggingface_hub client runs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from hf_calibprune import load_pruning_info, push_to_hub, save_sparse
from hf_calibprune.errors import CheckpointError

from .hub_helpers import pruned_llama
from .hub_fakes import FakeHub

REPO = Path(__file__).resolve().parents[2]


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "2:4", torch.bfloat16, method="wanda")
    return save_sparse(model, tmp_path / "ckpt", format="compact", tokenizer=tokenizer)


def test_push_a_directory_in_one_commit(fake_hub, checkpoint):
    info = push_to_hub(checkpoint, "me/tiny-wanda", private=True, token="hf_fake")
    assert fake_hub.repos["me/tiny-wanda"]["visibility"] == "private"
    assert len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    assert info.oid == commit.oid and commit.revision == "main"
    assert "wanda" in commit.summary and "2:4" in commit.summary and "50.0% sparse" in commit.summary
    assert "calibration: <texts>, 2x16 tokens" in commit.summary
    local = {str(p.relative_to(checkpoint)): p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}
    assert commit.files == local  # every file, byte for byte, in that one commit
    info = load_pruning_info("me/tiny-wanda", cache_dir=checkpoint.parent / "hub-cache")
    assert info.report.method == "wanda" and info.config.pattern == "2:4"


def test_push_merges_into_the_readme_already_on_the_hub(fake_hub, checkpoint):
    push_to_hub(checkpoint, "me/tiny", token="hf_fake")
    remote = fake_hub.files["me/tiny"]["README.md"].decode()
    edited = remote.replace("---\n\n", "---\n\n# Written on the Hub\n\nKeep me.\n\n", 1).replace(
        "library_name: transformers", "library_name: transformers\nlanguage: fr")
    fake_hub.files["me/tiny"]["README.md"] = edited.encode()
    push_to_hub(checkpoint, "me/tiny", token="hf_fake", commit_message="second")
    merged = fake_hub.commits[-1].files["README.md"].decode()
    assert fake_hub.commits[-1].summary == "second"
    assert "Keep me." in merged and merged.count("## Pruning (hf_calibprune)") == 1
    assert ModelCard(merged).data.language == "fr"
    assert (checkpoint / "README.md").read_text() == remote  # the local folder is not modified


def test_a_failing_upload_raises_with_retry_advice_and_leaves_the_folder_intact(monkeypatch, checkpoint):
    from huggingface_hub import constants

    hub = FakeHub(fail_commit=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    before = _digest(checkpoint)
    try:
        with pytest.raises(CheckpointError) as caught:
            push_to_hub(checkpoint, "me/tiny", token="hf_fake")
    finally:
        hub.stop()
    message = str(caught.value)
    assert "500" in message and f"hf-calibprune push {checkpoint} me/tiny" in message and "untouched" in message
    assert _digest(checkpoint) == before and hub.commits == []


def test_push_a_model_saves_it_first(fake_hub, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    model = pruned_llama(tokenizer, "unstructured")
    push_to_hub(model, "me/from-model", token="hf_fake", tokenizer=tokenizer)
    files = fake_hub.commits[-1].files
    assert {"model.safetensors", "config.json", "pruning_report.json", "README.md", "tokenizer.json"} <= set(files)
    assert not list(tmp_path.glob("hf_calibprune-push-*"))  # the temporary save is removed after success


def test_cli_push_against_hf_endpoint(fake_hub, checkpoint):
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_TOKEN": "hf_fake", "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_calibprune", "push", str(checkpoint), "me/cli", "--private"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert fake_hub.repos["me/cli"]["visibility"] == "private"
    assert fake_hub.commits[-1].files["config.json"] == (checkpoint / "config.json").read_bytes()
    assert "me/cli" in result.stdout
