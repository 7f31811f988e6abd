"""Bad input gives one clear error before any pruning: what was wrong and how to fix it."""

from __future__ import annotations

import json
import logging
import time

import pytest

from hf_calibprune.calibration import CalibrationConfig, build_calibration_samples, render_samples
from hf_calibprune.errors import CalibrationError, ConfigError


def _build(calibration, tokenizer, **kwargs):
    kwargs = {"num_samples": 4, "seq_len": 32, "seed": 0} | kwargs
    return build_calibration_samples(calibration, tokenizer, **kwargs)


def test_too_little_text(tokenizer):
    with pytest.raises(CalibrationError, match=r"fewer than num_samples x seq_len = 4 x 64 = 256") as info:
        _build(["a short text.", "another one."], tokenizer, seq_len=64)
    assert "Lower num_samples or seq_len" in str(info.value)


def test_too_little_text_in_a_named_source(tokenizer, fixtures_dir, no_hub):
    config = CalibrationConfig(sources="rte", data_dir=str(fixtures_dir))
    with pytest.raises(CalibrationError, match="'rte' has .* tokens"):
        _build(config, tokenizer, num_samples=64, seq_len=512)


def test_empty_text_field(tokenizer, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(5)))
    with pytest.raises(CalibrationError, match="'text' of .* is empty in all 5 rows"):
        _build(str(path), tokenizer)


def test_missing_text_field_names_the_columns(tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"body": "x y z", "title": "t"}) + "\n" for _ in range(5)))
    with pytest.raises(CalibrationError, match=r"no column 'text'. Columns: body, title"):
        _build(str(path), tokenizer)


def test_template_naming_a_missing_column(tokenizer, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": "q?", "solution": "a"}) + "\n" for _ in range(5)))
    config = CalibrationConfig(sources=str(path), template="Q: {question}\nA: {answer}")
    with pytest.raises(CalibrationError, match=r"names column 'answer'.*Columns: question, solution"):
        _build(config, tokenizer)


def test_weights_must_sum_to_one():
    with pytest.raises(CalibrationError, match=r"sum to 0.9, not 1") as info:
        CalibrationConfig(sources={"gsm8k": 0.5, "c4": 0.4})
    assert isinstance(info.value, ConfigError)
    with pytest.raises(CalibrationError, match="must be > 0"):
        CalibrationConfig(sources={"gsm8k": 1.0, "c4": 0.0})


def test_unknown_source_and_format_suggest_a_fix(tokenizer):
    with pytest.raises(CalibrationError, match=r"Unknown calibration source 'gsm8kk'. Did you mean 'gsm8k'\?"):
        CalibrationConfig(sources="gsm8kk")
    with pytest.raises(CalibrationError, match=r"Did you mean 'icl'\?"):
        CalibrationConfig(sources="gsm8k", format="icll")
    with pytest.raises(CalibrationError, match=r"Did you mean 'cot'\?"):
        _build("gsm8k:cott", tokenizer)
    with pytest.raises(CalibrationError, match=r"Did you mean 'wikitext2'\?"):
        _build(CalibrationConfig(sources={"wikitext": 1.0}), tokenizer)


def test_cot_without_rationales_names_the_sources_that_have_them():
    with pytest.raises(CalibrationError, match=r"'boolq' has none. Sources with rationales: gsm8k, svamp, esnli"):
        CalibrationConfig(sources="boolq", format="cot")
    with pytest.raises(CalibrationError, match="'race' has none"):
        CalibrationConfig(sources={"gsm8k": 0.5, "race": 0.5}, format="cot")


def test_format_that_does_not_apply():
    with pytest.raises(CalibrationError, match=r"'c4' \(pretraining\) does not support format 'icl'"):
        CalibrationConfig(sources="c4:icl")
    with pytest.raises(CalibrationError, match="does not support format 'zero'"):
        CalibrationConfig(sources="c4", format="zero")
    # A config-level format applies where it can: the issue's own example.
    config = CalibrationConfig(sources={"gsm8k": 0.5, "c4": 0.5}, format="icl", shots=3, num_samples=128, seq_len=2048, seed=0)
    assert [c.format for c in config.components] == ["icl", "icl"]


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"shots": -1}, "shots=-1"),
        ({"shots": 2, "format": "single"}, "exactly one solved example"),
        ({"shots": 0, "format": "icl"}, "use format 'zero'"),
        ({"num_samples": 0}, "num_samples=0"),
        ({"seq_len": -5}, "seq_len=-5"),
        ({"template": "{question"}, "not a valid str.format template"),
        ({"data_files": "x.jsonl", "sources": {"gsm8k": 0.5, "c4": 0.5}}, "must be a dict source name"),
        ({"data_files": {"gsm8": "x.jsonl"}}, "names source 'gsm8'"),
    ],
)
def test_bad_config_values(kwargs, pattern):
    kwargs = {"sources": "gsm8k"} | kwargs
    with pytest.raises(CalibrationError, match=pattern):
        CalibrationConfig(**kwargs)


def test_config_round_trip_and_unknown_keys(caplog):
    config = CalibrationConfig(
        sources={"gsm8k:cot": 0.5, "c4": 0.5}, format="icl", shots=3, num_samples=16, seq_len=128, seed=1,
        data_files={"gsm8k": ["a.jsonl"]}, revision={"c4": "main"},
    )
    data = json.loads(config.to_json_string())
    assert CalibrationConfig.from_dict(data) == config
    assert data["hf_calibprune_version"]
    with pytest.raises(CalibrationError, match=r"Unknown calibration config key 'shot'. Did you mean 'shots'\?"):
        CalibrationConfig.from_dict({"sources": "c4", "shot": 3})
    with caplog.at_level(logging.WARNING):
        newer = CalibrationConfig.from_dict({"sources": "c4", "future_key": 1, "hf_calibprune_version": "99.0.0"})
    assert newer == CalibrationConfig(sources="c4") and "future_key" in caplog.text


def test_offline_hub_load_says_what_to_pass(tokenizer, no_hub):
    start = time.perf_counter()
    with pytest.raises(CalibrationError) as info:
        _build("anli_r2", tokenizer)
    message = str(info.value)
    assert "facebook/anli" in message and "train_r2" in message
    assert "HF_HUB_OFFLINE=1" in message or "HF_DATASETS_OFFLINE=1" in message
    assert "data_files" in message and "data_dir" in message
    assert time.perf_counter() - start < 5

    with pytest.raises(CalibrationError, match="someone/private-set"):
        _build("someone/private-set", tokenizer)
    with pytest.raises(CalibrationError, match="allenai/c4.*c4-train.00000-of-01024"):
        render_samples("c4", n=1)


def test_cot_rationales_missing_locally(tmp_path, no_hub):
    (tmp_path / "dsbs_svamp_train.jsonl").write_text(json.dumps({"input": "q\nq?", "label": "( 1.0 + 1.0 )"}) + "\n")
    with pytest.raises(CalibrationError, match=r"llm_cot/train_CoT_\*\.json"):
        render_samples("svamp", "cot", 1, data_files=str(tmp_path / "dsbs_svamp_train.jsonl"))


def test_missing_local_file(tokenizer):
    with pytest.raises(CalibrationError, match="does not exist"):
        _build("no/such/file.jsonl", tokenizer)


def test_unsupported_object(tokenizer):
    with pytest.raises(CalibrationError, match="Cannot calibrate on a int"):
        _build(42, tokenizer)


def test_self_needs_a_model(tokenizer):
    with pytest.raises(CalibrationError, match="pass model="):
        _build("self", tokenizer)
