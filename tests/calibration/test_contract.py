"""Every registered source x every format it supports builds well-formed, deterministic samples from its
fixture (``fixtures/<source>/...`` in the source's raw schema), with the Hub switched off."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from hf_calibprune.calibration import SOURCES, CalibrationConfig, build_calibration_samples, render_samples

from .conftest import build_tiny_llama

NUM_SAMPLES, SEQ_LEN = 4, 16


def _cases():
    for name in SOURCES.names():
        cls = SOURCES.get(name)
        for fmt in cls.supported_formats():
            yield name, fmt, None
            if fmt in ("icl", "cot"):
                yield name, fmt, 2


CASES = list(_cases())


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return build_tiny_llama(tokenizer)


def _build(name, fmt, shots, tokenizer, model, fixtures_dir, seed=0):
    config = CalibrationConfig(sources=name, format=fmt, shots=shots, data_dir=str(fixtures_dir))
    return build_calibration_samples(config, tokenizer, num_samples=NUM_SAMPLES, seq_len=SEQ_LEN, seed=seed, model=model)


@pytest.mark.parametrize("name,fmt,shots", CASES, ids=[f"{n}-{f}-{s}" for n, f, s in CASES])
def test_every_source_and_format_builds(name, fmt, shots, tokenizer, tiny_model, fixtures_dir, no_hub):
    samples = _build(name, fmt, shots, tokenizer, tiny_model, fixtures_dir)

    assert samples.input_ids.shape == (NUM_SAMPLES, SEQ_LEN)
    assert samples.attention_mask.shape == (NUM_SAMPLES, SEQ_LEN)
    assert samples.input_ids.dtype == torch.long and samples.attention_mask.dtype == torch.long
    mask = samples.attention_mask
    assert set(mask.unique().tolist()) <= {0, 1}
    # Right padding only: each row is ones then zeros, with at least one real token.
    assert bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool((mask[:, 0] == 1).all())
    assert bool((samples.input_ids[mask == 0] == tokenizer.pad_token_id).all())
    assert int(samples.input_ids.max()) < len(tokenizer)

    fingerprint = samples.fingerprint
    json.dumps(fingerprint)  # JSON-able
    assert fingerprint["token_sha256"] == hashlib.sha256(samples.input_ids.numpy().astype("<i8").tobytes()).hexdigest()
    assert (fingerprint["num_samples"], fingerprint["seq_len"], fingerprint["seed"]) == (NUM_SAMPLES, SEQ_LEN, 0)
    [entry] = fingerprint["sources"]
    assert entry["name"] == name
    if SOURCES.get(name).kind in ("task", "pretraining"):
        assert entry["origin"] == "local" and all(str(fixtures_dir) in f for f in entry["files"])
    assert name in samples.describe()

    again = _build(name, fmt, shots, tokenizer, tiny_model, fixtures_dir)
    assert torch.equal(again.input_ids, samples.input_ids)
    assert torch.equal(again.attention_mask, samples.attention_mask)
    if name != "ellipses":  # the ellipses baseline is the same sequence whatever the seed
        other = _build(name, fmt, shots, tokenizer, tiny_model, fixtures_dir, seed=1)
        assert not torch.equal(other.input_ids, samples.input_ids)


@pytest.mark.parametrize("name", [n for n in SOURCES.names() if n != "self"])
def test_every_source_renders_text(name, fixtures_dir, no_hub):
    for fmt in SOURCES.get(name).supported_formats():
        texts = render_samples(name, fmt, 2, data_dir=str(fixtures_dir), seed=0)
        assert len(texts) == 2 and all(isinstance(t, str) and t.strip() for t in texts)
        if fmt == "cot":
            assert all("So the answer is" in t for t in texts)


def test_every_registered_name_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "calibration.md").read_text()
    for name in SOURCES.names():
        assert f"`{name}`" in doc, f"docs/calibration.md does not describe source '{name}'"
