# The two commands: `make demo` and `make test`. Both set up .venv first (CPU torch, pinned versions).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test embedded lint bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build of torch first, so nothing pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements.lock -e ".[dev]"
	$(PY) -m serve.protogen
	# DeepSpeed compiles a small CPU op on first use; do it once here, not inside a test
	$(PY) -m pretrain.warmup
	touch $@

demo: setup
	$(VENV)/bin/e4t demo --out out/demo

test: setup
	$(PY) -m pytest -q tests

# Rebuild every embedded artifact (shards, base, domain packs) from nothing; each stage skips itself when current.
embedded: setup
	$(VENV)/bin/e4t pretrain embedded

bench: setup
	$(PY) bench/tune_vs_generate.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf out runs
