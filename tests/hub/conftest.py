"""Fixtures of the hub tests: a local fake of the Hub HTTP API."""

from __future__ import annotations

import pytest

from .hub_fakes import FakeHub


@pytest.fixture
def fake_hub(monkeypatch):
    """A running :class:`FakeHub`, with huggingface_hub pointed at it as ``HF_ENDPOINT`` would."""
    from huggingface_hub import constants

    hub = FakeHub().start()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield hub
    hub.stop()
