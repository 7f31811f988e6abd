"""The mutant list of `make mutants` stays applicable: an engine change that rewrites a line a mutant names would
otherwise leave that realistic bug silently unchecked until someone runs the (long) mutation check."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hf_calibprune_mutants", REPO / "tools" / "mutants.py")
mutants = sys.modules["hf_calibprune_mutants"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutants)
MUTANTS = mutants.load_mutants(mutants.DEFAULT_LIST)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_mutant_applies_once_and_names_existing_tests(mutant):
    text = (REPO / mutant.file).read_text(encoding="utf-8")
    mutated, why = mutants.mutate(text, mutant)
    assert mutated is not None, why
    for node in mutant.tests:
        path, _, rest = node.partition("::")
        assert (REPO / path).is_file(), node
        function = rest.split("[")[0]
        if function:
            assert f"def {function}(" in (REPO / path).read_text(encoding="utf-8"), node
