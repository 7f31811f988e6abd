"""Every shipped config in configs/ is a valid PruningConfig."""

from pathlib import Path

import pytest

from hf_calibprune import PruningConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = PruningConfig.from_pretrained(path)
    assert PruningConfig.from_dict(config.to_dict()) == config
