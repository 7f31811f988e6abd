"""CalibratedPruner end to end on tiny random models of every supported architecture."""

import pytest
import torch

from conftest import TEXT, tiny_model
from hf_calibprune import CalibratedPruner, PruningConfig, PruningReport
from hf_calibprune.errors import CheckpointError, ConfigError, ModelStructureError
from hf_calibprune.models import find_decoder_layout, find_prunable_linears, get_weight

ARCHITECTURES = ["llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "opt", "gpt2", "gpt_neox"]


def prune(model, tokenizer, **overrides):
    settings = dict(method="wanda", calibration=[TEXT] * 3, num_samples=4, seq_len=32, batch_size=2)
    settings.update(overrides)
    return CalibratedPruner(PruningConfig(**settings), tokenizer=tokenizer, progress=False).prune(model)


def assert_exact(model, pattern="unstructured", scope="row", sparsity=0.5):
    for block in find_decoder_layout(model).blocks:
        for name, module in find_prunable_linears(block).items():
            zeros = get_weight(module) == 0
            if pattern != "unstructured":
                n, m = map(int, pattern.split(":"))
                assert (zeros.reshape(zeros.shape[0], -1, m).sum(-1) == m - n).all(), name
            elif scope == "layer":
                assert int(zeros.sum()) == int(zeros.numel() * sparsity), name
            else:
                assert (zeros.sum(1) == int(zeros.shape[1] * sparsity)).all(), name


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("method, pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4")])
def test_every_architecture_prunes_exactly_and_still_generates(model_type, method, pattern, tokenizer):
    model = prune(tiny_model(model_type), tokenizer, method=method, pattern=pattern)
    assert_exact(model, pattern)
    report = model.pruning_report
    assert report.overall_sparsity == pytest.approx(0.5)
    assert len(report.blocks) == 2 and all(r.reconstruction_error is not None for r in report.layers)
    ids = tokenizer("The quick", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_dtypes(dtype, method, tokenizer):
    model = prune(tiny_model("llama", dtype=dtype), tokenizer, method=method)
    assert model.dtype == dtype
    assert_exact(model)


def test_magnitude_needs_no_tokenizer_and_prunes_per_layer():
    model = CalibratedPruner(PruningConfig(method="magnitude", sparsity=0.3), progress=False).prune(tiny_model())
    assert_exact(model, scope="layer", sparsity=0.3)
    assert model.pruning_report.calibration is None
    assert all(r.reconstruction_error is None for r in model.pruning_report.layers)


def test_calibration_from_local_jsonl_and_fingerprint(tokenizer, calibration_file):
    first = prune(tiny_model(), tokenizer, calibration=str(calibration_file), seed=3)
    second = prune(tiny_model(), tokenizer, calibration=str(calibration_file), seed=3)
    third = prune(tiny_model(), tokenizer, calibration=str(calibration_file), seed=4)
    fingerprint = first.pruning_report.calibration
    assert fingerprint["num_samples"] == 4 and fingerprint["seq_len"] == 32 and fingerprint["seed"] == 3
    assert fingerprint["token_sha256"] == second.pruning_report.calibration["token_sha256"]
    assert fingerprint["token_sha256"] != third.pruning_report.calibration["token_sha256"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_datasets_dataset_as_calibration(tokenizer):
    datasets = pytest.importorskip("datasets")
    model = prune(tiny_model(), tokenizer, calibration=datasets.Dataset.from_dict({"text": [TEXT] * 3}))
    assert_exact(model)


def test_owl_varies_block_sparsity_around_the_target(tokenizer):
    model = tiny_model("llama", num_hidden_layers=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # make block 0 outlier-heavy: a tenth of every weight matrix ten times larger
        for module in find_prunable_linears(model.model.layers[0]).values():
            module.weight[torch.rand(module.weight.shape, generator=generator) < 0.1] *= 10
    prune(model, tokenizer, allocation="owl", owl_lambda=0.1)
    requested = model.pruning_report.layer_sparsity
    values = list(requested.values())
    assert sum(values) / len(values) == pytest.approx(0.5)
    assert max(values) - min(values) == pytest.approx(0.2)  # OWL min-max scales the ratios to a 2·lambda spread
    assert requested["model.layers.0"] == min(values)


def test_report_round_trip_and_summary(tokenizer, tmp_path):
    model = prune(tiny_model(), tokenizer, method="sparsegpt")
    report = model.pruning_report
    path = report.save(tmp_path / "pruning_report.json")
    loaded = PruningReport.load(path)
    assert loaded.to_dict() == report.to_dict()
    assert "model.layers.1" in report.summary_table()
    assert loaded.layers[0].info["dampening"] == 0.01
    path.write_text(path.read_text()[:50])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        PruningReport.load(path)


def test_training_mode_and_use_cache_are_restored(tokenizer):
    model = tiny_model()
    model.train()
    prune(model, tokenizer)
    assert model.training and model.config.use_cache


def test_seq_len_beyond_positions(tokenizer):
    with pytest.raises(ConfigError, match=r"`seq_len=512` is longer than the model's 256 positions"):
        prune(tiny_model(), tokenizer, seq_len=512)


def test_encoder_only_model_is_refused():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64))
    with pytest.raises(ModelStructureError, match="not a decoder-only causal language model"):
        CalibratedPruner(PruningConfig(method="magnitude"), progress=False).prune(model)
