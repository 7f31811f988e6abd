"""The model card: metadata round trip through huggingface_hub, numbers from the report, README merging."""

from __future__ import annotations

import torch
from huggingface_hub import ModelCard

from hf_calibprune import save_sparse
from hf_calibprune.hub.card import (
    END_MARKER,
    START_MARKER,
    base_model_license,
    build_model_card,
    calibration_dataset_ids,
    evaluation_rows,
)

from .hub_helpers import pruned_llama


def _report(**overrides):
    report = {
        "method": "wanda",
        "pattern": "unstructured",
        "requested_sparsity": 0.5,
        "overall_sparsity": 0.4987,
        "layers": [
            {"name": f"model.layers.{b}.mlp.up_proj", "block": b, "shape": [64, 32], "requested_sparsity": 0.5,
             "measured_sparsity": m, "reconstruction_error": 0.01, "seconds": 0.1}
            for b, m in ((0, 0.4961), (1, 0.5013))
        ],
        "blocks": [
            {"index": 0, "name": "model.layers.0", "requested_sparsity": 0.5, "measured_sparsity": 0.4961, "seconds": 0.2},
            {"index": 1, "name": "model.layers.1", "requested_sparsity": 0.5, "measured_sparsity": 0.5013, "seconds": 0.3},
        ],
        "calibration": {  # the fingerprint's shape: one record per source of the mixture
            "sources": [
                {"name": "c4", "origin": "local", "path": "/data/c4/c4-train.jsonl", "num_samples": 64, "weight": 0.5},
                {"name": "gsm8k:icl", "origin": "hub", "hub_id": "openai/gsm8k", "num_samples": 64, "weight": 0.5},
                {"name": "/data/my_notes.jsonl", "origin": "local", "num_samples": 0, "weight": 0.0},
            ],
            "format": "plain", "num_samples": 128, "seq_len": 2048, "seed": 3, "token_sha256": "1f2e3d",
        },
        "evaluation": {"wikitext2_perplexity": {"dense": 12.25, "pruned": 15.5}, "gsm8k_accuracy": 0.31},
        "versions": {"hf_calibprune": "0.1.0", "torch": "2.13.0"},
        "seconds": 12.5,
        "config": {"method": "wanda", "sparsity": 0.5},
    }
    report.update(overrides)
    return report


def test_metadata_round_trips_through_huggingface_hub():
    card = build_model_card(_report(), {"method": "wanda", "sparsity": 0.5}, base_model="HuggingFaceTB/SmolLM2-135M",
                            license="apache-2.0", checkpoint={"format": "compact", "size_ratio": 0.6312, "weights_bytes": 9})
    parsed = ModelCard(str(card))
    assert parsed.data.to_dict() == card.data.to_dict()
    data = parsed.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0"
    assert {"pruned", "sparse", "hf_calibprune", "wanda", "unstructured-sparsity", "hf_calibprune-compact"} <= set(data.tags)
    assert data.datasets == ["allenai/c4", "openai/gsm8k"]
    results = {r.metric_name: r for r in data.eval_results}
    assert results["wikitext2_perplexity"].metric_type == "perplexity"
    assert results["wikitext2_perplexity"].metric_value == 15.5
    assert results["gsm8k_accuracy"].metric_type == "accuracy"


def test_body_shows_measured_numbers_and_reproduction():
    text = build_model_card(_report(), {"method": "wanda", "sparsity": 0.5}, base_model="org/base",
                            command="hf-calibprune prune --model org/base --method wanda").text
    assert "| measured sparsity (pruned layers) | 49.87% |" in text  # the report, not the requested 50%
    assert "| 0 | 50.00% | 49.61% | 0.2 |" in text and "| 1 | 50.00% | 50.13% | 0.3 |" in text
    assert "| wikitext2_perplexity | perplexity | 12.25 | 15.5 |" in text
    assert "| seed | 3 |" in text and "| num_samples | 128 |" in text and "| seq_len | 2048 |" in text
    assert "| gsm8k:icl | hub | 64 | 0.5 | – | hub_id: openai/gsm8k |" in text
    assert "hf-calibprune prune --model org/base --method wanda" in text
    assert '"sparsity": 0.5' in text
    assert "arXiv:2306.11695" in text and "arXiv:2410.07461" in text
    assert "arXiv:2301.00774" not in text  # SparseGPT was not used
    assert text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1


def test_per_block_sparsity_is_aggregated_from_layers_without_block_records():
    text = build_model_card(_report(blocks=[]), None).text
    assert "| 0 | 50.00% | 49.61% |" in text and "| 1 | 50.00% | 50.13% |" in text


def test_merge_keeps_the_users_text_and_metadata_and_is_idempotent():
    user = "---\nlicense: mit\ntags:\n- my-tag\nlanguage: en\n---\n\n# My model\n\nMy own words.\n"
    first = build_model_card(_report(), None, base_model="org/base", license="apache-2.0", existing=user)
    assert first.data.license == "mit" and first.data.language == "en"
    assert first.data.tags[0] == "my-tag" and "pruned" in first.data.tags
    assert first.text.index("My own words.") < first.text.index(START_MARKER)
    again = build_model_card(_report(overall_sparsity=0.61), None, base_model="org/base", existing=str(first))
    assert str(again).count(START_MARKER) == 1 and "My own words." in str(again)
    assert "61.00%" in again.text and "49.87%" not in again.text
    assert ModelCard(str(again)).data.to_dict() == again.data.to_dict()


def test_calibration_ids_and_evaluation_shapes():
    assert calibration_dataset_ids({"sources": [{"name": "<texts>", "origin": "memory"}]}) == []
    assert calibration_dataset_ids({"source": "wikitext2"}) == ["Salesforce/wikitext"]
    assert calibration_dataset_ids({"datasets": ["a/b", "a/b", "c/d"]}) == ["a/b", "c/d"]
    rows = evaluation_rows({"dense": {"ppl": 10.0}, "pruned": {"ppl": 11.0}})
    assert rows == [{"name": "ppl", "pruned": 11.0, "dense": 10.0, "metric": "perplexity", "dataset": "ppl"}]
    assert evaluation_rows({"notes": "n/a", "acc": float("nan")}) == []


def test_license_is_carried_over_from_a_local_base_model_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: llama3.1\n---\n# base\n")
    assert base_model_license(tmp_path) == "llama3.1"
    assert base_model_license(tmp_path / "missing") is None


def test_saved_card_comes_from_the_models_report(tmp_path, tokenizer):
    model = pruned_llama(tokenizer, "2:4", torch.float32)
    save_sparse(model, tmp_path / "ckpt", base_model="org/tiny-llama")
    card = ModelCard.load(tmp_path / "ckpt" / "README.md")
    assert card.data.base_model == "org/tiny-llama"
    assert "magnitude" in card.data.tags and "2-4-sparsity" in card.data.tags
    report = model.pruning_report
    assert f"| measured sparsity (pruned matrices) | {100 * report.pruned_sparsity:.2f}% |" in card.text
    assert f"| measured sparsity (all decoder-block weights) | {100 * report.overall_sparsity:.2f}% |" in card.text
    assert card.text.count("| model.layers.") == 0 and "| 0 | 50.00% | 50.00% |" in card.text


def test_the_card_names_paths_of_the_report_by_file_name():
    card = str(build_model_card(_report(), None, command="hf-calibprune prune --calibration /data/my_notes.jsonl"))
    assert "/data/" not in card
    assert "| my_notes.jsonl | local | 0 |" in card and "path: c4-train.jsonl" in card
    assert "--calibration my_notes.jsonl" in card


def test_the_card_says_how_the_prune_ran_in_one_row():
    execution = {"world_size": 2, "backend": "gloo", "processes": [
        {"rank": 0, "samples": [0, 64], "devices": ["cuda:0"]}, {"rank": 1, "samples": [64, 128], "devices": ["cuda:1"]}]}
    text = build_model_card(_report(execution=execution), None).text
    rows = [line for line in text.splitlines() if line.startswith("| processes |")]
    assert rows == ["| processes | 2 (gloo backend) — rank 0: samples 0–63 on cuda:0; rank 1: samples 64–127 on cuda:1 |"]
    assert "| processes |" not in build_model_card(_report(), None).text  # reports written before it say nothing
