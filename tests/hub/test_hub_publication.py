"""Published checkpoints carry no private path: everything is pruned and saved from a directory whose path holds a
marker, and no byte of any saved file holds the marker; a card edited to hold a path is refused before publishing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TEXT, make_tokenizer, tiny_model
from transformers import AutoModelForCausalLM

from hf_calibprune import CalibratedPruner, PruningConfig, push_to_hub, save_sparse
from hf_calibprune.calibration import CalibrationConfig
from hf_calibprune.cli import main as cli_main
from hf_calibprune.errors import CheckpointError
from hf_calibprune.hub.publication import check_publishable

MARKER = "PRIVATE_e7c1_MARKER"
FIXTURES = Path(__file__).resolve().parents[1] / "calibration" / "fixtures"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files_holding(directory: Path, needle: str) -> list[str]:
    """Every file under ``directory`` (recursively, hidden ones too) whose bytes contain ``needle``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and needle.encode() in p.read_bytes())


@pytest.fixture
def private(tmp_path) -> dict[str, Path]:
    """A model directory, two calibration files and a data mirror, all under a path holding :data:`MARKER`."""
    root = tmp_path / f"home-{MARKER}" / "project"
    model_dir = root / "models" / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    jsonl = root / "data" / "notes.jsonl"
    jsonl.parent.mkdir(parents=True)
    jsonl.write_text("".join(json.dumps({"text": f"Note {i}. " + TEXT[i * 5 :]}) + "\n" for i in range(12)))
    text = root / "data" / "diary.txt"
    text.write_text(TEXT * 2)
    mirror = root / "mirror"
    for source in ("gsm8k", "c4"):
        shutil.copytree(FIXTURES / source, mirror / source)
    return {"root": root, "model": model_dir, "jsonl": jsonl, "text": text, "mirror": mirror, "out": root / "out"}


def _prune_local(private: dict[str, Path]):
    model = AutoModelForCausalLM.from_pretrained(private["model"])  # name_or_path: the private directory
    calibration = CalibrationConfig(sources={str(private["jsonl"]): 0.5, str(private["text"]): 0.5})
    config = PruningConfig(method="wanda", calibration=calibration, num_samples=4, seq_len=32)
    return CalibratedPruner(config, tokenizer=make_tokenizer(), progress=False).prune(model)


@pytest.mark.parametrize("base_model", [None, "org/tiny-base"])
@pytest.mark.parametrize("format", ["dense", "compact"])
def test_saved_files_hold_no_private_path(private, format, base_model):
    model = _prune_local(private)
    assert MARKER in json.dumps(model.pruning_report.to_dict())  # the user's own report keeps the paths
    command = f"hf-calibprune prune --model {private['model']} --calibration {private['jsonl']} --output {private['out']}"
    out = save_sparse(model, private["out"], format=format, tokenizer=make_tokenizer(), base_model=base_model,
                      command=command)
    assert _files_holding(out, MARKER) == []
    assert _files_holding(out, str(Path.home()) + os.sep) == []
    card = (out / "README.md").read_text()
    report = json.loads((out / "pruning_report.json").read_text())
    expected = [{"name": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in (private["text"], private["jsonl"])]
    assert report["local_files"] == expected  # named by file name, with size and hash
    for file in expected:
        assert f"| {file['name']} | {file['bytes']} | {file['sha256']} |" in card
    config = json.loads((out / "pruning_config.json").read_text())
    assert config["calibration"]["calibration_config"]["sources"] == {"notes.jsonl": 0.5, "diary.txt": 0.5}
    if base_model:
        assert f"This model is `{base_model}` pruned" in card and f"--model {base_model} " in card
    else:
        digest = _sha256(private["model"] / "config.json")
        assert f"This model is a local model (`config.json` sha256 `{digest}`) pruned" in card
        assert "--model '<local model>' " in card
    assert "--calibration notes.jsonl --output out" in card


def test_a_hub_id_in_the_local_config_names_the_model(private):
    config_path = private["model"] / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "_name_or_path": "org/original"}))
    out = save_sparse(_prune_local(private), private["out"])
    assert "This model is `org/original` pruned" in (out / "README.md").read_text()
    assert _files_holding(out, MARKER) == []


def test_cli_with_a_data_dir_and_local_files_publishes_names(private):
    args = ["prune", "--model", str(private["model"]), "--calibration", "gsm8k:icl", "--calibration", str(private["jsonl"]),
            "--data-dir", str(private["mirror"]), "--num-samples", "4", "--seq-len", "32", "--method", "sparsegpt",
            "--output", str(private["out"]), "--format", "compact", "--no-progress"]
    assert cli_main(args) == 0
    out = private["out"]
    assert _files_holding(out, MARKER) == []
    card = (out / "README.md").read_text()
    assert "--data-dir mirror" in card and "--calibration notes.jsonl" in card
    report = json.loads((out / "pruning_report.json").read_text())
    gsm8k = next(s for s in report["calibration"]["sources"] if s["name"] == "gsm8k")
    assert gsm8k["files"] == ["train.jsonl"]
    names = {f["name"]: f["sha256"] for f in report["local_files"]}
    assert names["train.jsonl"] == _sha256(private["mirror"] / "gsm8k" / "train.jsonl")
    assert names["notes.jsonl"] == _sha256(private["jsonl"])
    assert json.loads((out / "pruning_config.json").read_text())["calibration"]["calibration_config"]["data_dir"] == "mirror"


def test_a_card_edited_to_hold_a_calibration_path_is_refused(private, fake_hub):
    out = save_sparse(_prune_local(private), private["out"])
    readme = out / "README.md"
    readme.write_text(readme.read_text() + f"\nCalibrated on {private['jsonl']}.\n")
    with pytest.raises(CheckpointError) as caught:
        push_to_hub(out, "me/tiny", token="hf_fake")
    assert "README.md" in str(caught.value) and str(private["jsonl"]) in str(caught.value)
    assert fake_hub.commits == [] and fake_hub.repos == {}  # refused before anything reached the Hub


def test_save_refuses_to_merge_a_readme_that_names_a_private_path(private):
    out = save_sparse(_prune_local(private), private["out"])
    readme = out / "README.md"
    readme.write_text(readme.read_text() + f"\nThe weights came from {private['model']}.\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointError, match="the model directory") as caught:
        save_sparse(_prune_local(private), out, overwrite=True)
    assert f"Refusing to publish {out / 'README.md'}: it contains '{private['model']}'" in str(caught.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old checkpoint is untouched


def test_the_check_refuses_the_home_directory_and_unknown_local_paths(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("Plain text, https://arxiv.org/abs/2306.11695, org/name, 1/2, </details>.\n")
    check_publishable(folder)
    (folder / "README.md").write_text(f"Data in {Path.home() / 'corpus'}.\n")
    with pytest.raises(CheckpointError, match="home directory"):
        check_publishable(folder)
    (folder / "README.md").write_text(f"Data in {tmp_path / 'corpus.jsonl'}.\n")  # no known private path: found anyway
    with pytest.raises(CheckpointError, match="a local path"):
        check_publishable(folder)
    (folder / "README.md").write_text("Run /usr/bin/env python.\n")  # the system's paths name nobody
    check_publishable(folder)


def test_free_text_keeps_system_paths_and_loses_private_ones(private):
    from hf_calibprune.hub.publication import prepare_publication

    texts = ["Run cd /usr/lib/python3 && ls, see https://example.org/a/b or 1/2.",
             f"Notes were kept in {private['jsonl']}, next to {private['root']}/drafts."]
    published = prepare_publication({"method": "wanda"}, {"calibration": texts})
    assert published.config["calibration"][0] == texts[0]
    assert published.config["calibration"][1] == "Notes were kept in notes.jsonl, next to drafts."
    assert MARKER not in json.dumps(published.config) and published.local_files[0]["name"] == "notes.jsonl"
