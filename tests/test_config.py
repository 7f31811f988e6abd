import json
import logging

import pytest

from hf_calibprune import PruningConfig
from hf_calibprune.errors import CheckpointError, ConfigError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity=1.2), r"`sparsity=1.2` is outside \[0, 1\); pass a fraction such as 0.5"),
        (dict(sparsity=-0.1), r"`sparsity=-0.1` is outside \[0, 1\)"),
        (dict(sparsity="half"), r"`sparsity='half'` must be a number"),
        (dict(pattern="4:2"), r"`pattern='4:2'` needs 0 < N < M"),
        (dict(pattern="2:4", sparsity=0.6), r"`sparsity=0.6` contradicts `pattern='2:4'`, which prunes exactly 0.5"),
        (dict(pattern="two-four"), r"`pattern='two-four'` is not understood"),
        (dict(method="wandaa"), r"Unknown pruning method 'wandaa'. Did you mean 'wanda'\?"),
        (dict(num_samples=0), r"`num_samples=0` must be a whole number of at least 1"),
        (dict(seq_len=-5), r"`seq_len=-5` must be a whole number"),
        (dict(batch_size=1.5), r"`batch_size=1.5` must be a whole number"),
        (dict(allocation="owll"), r"`allocation='owll'` is not one of uniform, owl. Did you mean 'owl'\?"),
        (dict(allocation="owl", pattern="2:4"), r"`allocation='owl'` varies sparsity per block"),
        (dict(allocation="owl", owl_lambda=0.7), r"`owl_lambda=0.7` must keep every block's sparsity"),
        (dict(schedule="onepass"), r"`schedule='onepass'` is not one of sequential, one-pass"),
        (dict(method="sparsegpt", method_options={"blocksize": 64}), r"Did you mean 'block_size'"),
        (dict(calibration=[]), r"must hold text strings"),
        (dict(calibration=""), r"is empty"),
        (dict(ignore="mlp"), r"`ignore='mlp'` must be a list"),
    ],
)
def test_bad_values_are_explained(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**kwargs)


def test_pattern_sets_sparsity():
    assert PruningConfig(pattern="2:4").sparsity == 0.5
    assert PruningConfig(pattern="1:4").sparsity == 0.75
    assert PruningConfig().sparsity == 0.5


def test_json_round_trip(tmp_path):
    config = PruningConfig(
        method="sparsegpt", pattern="4:8", calibration="data.jsonl", num_samples=16, seq_len=64,
        method_options={"block_size": 32}, ignore=["down_proj"],
    )
    data = json.loads(config.to_json_string())
    assert data["hf_calibprune_version"]
    assert PruningConfig.from_dict(data) == config
    config.save_pretrained(tmp_path)
    assert PruningConfig.from_pretrained(tmp_path) == config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: magnitude\nsparsity: 0.3\ncalibration: c.jsonl\n")
    assert PruningConfig.from_pretrained(path) == PruningConfig(method="magnitude", sparsity=0.3, calibration="c.jsonl")


def test_unknown_key_did_you_mean():
    with pytest.raises(ConfigError, match="Unknown PruningConfig key 'sparsty'. Did you mean 'sparsity'"):
        PruningConfig.from_dict({"sparsty": 0.5})


def test_keys_from_a_newer_version_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        config = PruningConfig.from_dict({"method": "wanda", "future_knob": 3, "hf_calibprune_version": "99.0"})
    assert config.method == "wanda"
    assert "future_knob" in caplog.text


def test_truncated_json_is_a_checkpoint_error(tmp_path):
    (tmp_path / "pruning_config.json").write_text('{"method": "wan')
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        PruningConfig.from_pretrained(tmp_path)


def test_in_memory_dataset_cannot_be_reloaded():
    datasets = pytest.importorskip("datasets")
    config = PruningConfig(calibration=datasets.Dataset.from_dict({"text": ["a b c"]}))
    with pytest.raises(ConfigError, match="pass `calibration=` again"):
        PruningConfig.from_dict(config.to_dict())
