"""Fixtures for the recovery tests."""

from __future__ import annotations

import pytest

from .recovery_helpers import TEXTS, build_tokenizer, prune_rows, tiny_llama


@pytest.fixture
def pruned_model():
    model = tiny_llama()
    model.pruned_names = prune_rows(model)
    return model


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_tokenizer()


@pytest.fixture
def texts():
    return list(TEXTS)
