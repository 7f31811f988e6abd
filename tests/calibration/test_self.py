"""The ``self`` source: text sampled from the model itself, offline, deterministic, leaving the model as it was."""

from __future__ import annotations

import math

import pytest
import torch

from hf_calibprune.calibration import CalibrationConfig, build_calibration_samples
from hf_calibprune.calibration.sources.self_generated import SelfGenerationOptions, generate_self_samples

from .conftest import build_tiny_llama


@pytest.fixture
def model(tokenizer):
    return build_tiny_llama(tokenizer)


def test_self_offline_deterministic_and_restores_the_model(model, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model.train()
    model.config.use_cache = False
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()

    samples = build_calibration_samples("self", tokenizer, num_samples=5, seq_len=24, seed=0, model=model)

    assert samples.input_ids.shape == (5, 24) and int(samples.attention_mask.sum()) == 5 * 24
    assert bool((samples.input_ids[:, 0] == tokenizer.bos_token_id).all())
    assert not bool((samples.input_ids[:, 1:] == tokenizer.eos_token_id).any())  # EOS is never sampled
    assert model.training and model.config.use_cache is False
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(torch.get_rng_state(), rng_state)
    entry = samples.fingerprint["sources"][0]
    assert entry["origin"] == "model" and entry["generated"] == math.ceil(5 / 0.8) and entry["kept"] == 5
    assert entry["generation"]["temperature"] == 0.8 and entry["generation"]["top_p"] == 0.95

    again = build_calibration_samples(CalibrationConfig(), tokenizer, num_samples=5, seq_len=24, seed=0, model=model)
    assert torch.equal(again.input_ids, samples.input_ids)  # "self" is the default source
    other = build_calibration_samples("self", tokenizer, num_samples=5, seq_len=24, seed=1, model=model)
    assert not torch.equal(other.input_ids, samples.input_ids)


def test_perplexity_filter_keeps_the_most_likely_samples(model, tokenizer):
    kept, _ = generate_self_samples(model, tokenizer, 4, 12, 0, SelfGenerationOptions(drop_fraction=0.5))
    every, _ = generate_self_samples(model, tokenizer, 8, 12, 0, SelfGenerationOptions(drop_fraction=0.0))
    assert len(kept) == 4 and all(sample in every for sample in kept)  # same draws, batch of 8 either way

    def loglik(sample):
        with torch.no_grad():
            logits = model(torch.tensor([sample])).logits[0, :-1].float()
        return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(sample[1:])[:, None]).sum())

    dropped = [s for s in every if s not in kept]
    assert min(loglik(s) for s in kept) >= max(loglik(s) for s in dropped) - 1e-4


def test_restores_the_model_on_error(model, tokenizer):
    model.train()

    class Boom(RuntimeError):
        pass

    def explode(*args, **kwargs):
        raise Boom

    handle = model.model.layers[1].register_forward_hook(lambda *a: explode())
    try:
        with pytest.raises(Boom):
            generate_self_samples(model, tokenizer, 2, 8, 0)
    finally:
        handle.remove()
    assert model.training


def test_mixture_with_self(model, tokenizer, fixtures_dir, no_hub):
    config = CalibrationConfig(sources={"self": 0.5, "gsm8k:icl": 0.5}, data_dir=str(fixtures_dir))
    samples = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=16, seed=0, model=model)
    assert [e["num_samples"] for e in samples.fingerprint["sources"]] == [2, 2]
