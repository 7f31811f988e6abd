"""Language as a catalogue choice: ``c4@de``, ``oscar@fr``, ``wikipedia@ja`` load the language's Hub
configuration (``datasets.load_dataset`` is replaced by a recorder: a third-party client), fail offline
with a message naming the local files to use, and mix across languages like any mixture."""

from __future__ import annotations

import socket
import threading

import datasets
import pytest

from hf_calibprune.calibration import CalibrationConfig, build_calibration_samples
from hf_calibprune.errors import CalibrationError

TEXTS = [{"text": f"Ein Dokument Nummer {i} über den Fluss und die Stadt. " * 6} for i in range(12)]


@pytest.fixture
def reachable_hub(monkeypatch, tmp_path):
    """A local TCP listener as HF_ENDPOINT, so the reachability probe passes without the network."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                connection.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    monkeypatch.setenv("HF_CALIBPRUNE_DATA_DIR", str(empty))
    calls = []

    def load_dataset(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        return iter(TEXTS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    yield calls
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("c4@de", ("allenai/c4", {"name": "de", "split": "train", "streaming": True})),
        ("oscar@fr", ("oscar", {"name": "unshuffled_deduplicated_fr", "split": "train", "streaming": True})),
        ("wikipedia@ja", ("wikimedia/wikipedia", {"name": "20231101.ja", "split": "train", "streaming": True})),
        ("wikipedia", ("wikimedia/wikipedia", {"name": "20231101.en", "split": "train", "streaming": True})),
    ],
)
def test_language_sources_load_the_languages_hub_configuration(spec, expected, reachable_hub, tokenizer):
    samples = build_calibration_samples(CalibrationConfig(sources=spec), tokenizer, num_samples=2, seq_len=16, seed=0)
    assert reachable_hub == [(expected[0], (), expected[1])]
    [entry] = samples.fingerprint["sources"]
    assert entry["name"] == spec and entry["origin"] == "hub" and entry["config"] == expected[1]["name"]
    assert entry["language"] == (spec.split("@")[1] if "@" in spec else "en")


def test_english_c4_keeps_the_pinned_shard(reachable_hub, tokenizer):
    build_calibration_samples(CalibrationConfig(sources="c4"), tokenizer, num_samples=2, seq_len=16, seed=0)
    [(path, _, kwargs)] = reachable_hub
    assert path == "allenai/c4" and kwargs["data_files"] == {"train": "en/c4-train.00000-of-01024.json.gz"}
    assert kwargs["revision"] == "607bd4c8450a42878aa9ddc051a65a055450ef87"


def test_offline_error_names_the_local_files(monkeypatch, tmp_path, tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = tmp_path / "mirror" / "multilingual" / "de"
    local.mkdir(parents=True)
    (local / "calib.jsonl").write_text('{"text": "Ein Satz."}\n', encoding="utf-8")
    config = CalibrationConfig(sources="c4@de", data_dir=str(tmp_path / "mirror"))
    with pytest.raises(CalibrationError) as error:
        build_calibration_samples(config, tokenizer, num_samples=2, seq_len=16, seed=0)
    message = str(error.value)
    assert "allenai/c4, config 'de'" in message and "HF_HUB_OFFLINE" in message
    assert str(local / "calib.jsonl") in message and "ud@de" in message


def test_local_language_copy_serves_offline_and_languages_mix(monkeypatch, fixtures_dir, tokenizer, no_hub):
    mixture = CalibrationConfig(sources={"ud@en": 0.5, "ud@de": 0.5}, data_dir=str(fixtures_dir))
    samples = build_calibration_samples(mixture, tokenizer, num_samples=4, seq_len=16, seed=0)
    entries = samples.fingerprint["sources"]
    assert [e["name"] for e in entries] == ["ud@en", "ud@de"] and [e["num_samples"] for e in entries] == [2, 2]
    assert entries[0]["files"][0].endswith("multilingual/en/calib.jsonl")
    assert entries[1]["files"][0].endswith("multilingual/de/calib.jsonl")
    german = build_calibration_samples(CalibrationConfig(sources="ud@de", data_dir=str(fixtures_dir)), tokenizer, num_samples=2, seq_len=16, seed=0)
    english = build_calibration_samples(CalibrationConfig(sources="ud@en", data_dir=str(fixtures_dir)), tokenizer, num_samples=2, seq_len=16, seed=0)
    assert german.fingerprint["token_sha256"] != english.fingerprint["token_sha256"]


def test_bad_language_specs_fail_at_construction():
    with pytest.raises(CalibrationError, match="has no language choice"):
        CalibrationConfig(sources="gsm8k@de")
    with pytest.raises(CalibrationError, match="not a language code"):
        CalibrationConfig(sources="c4@German")
