# `make test` and `make demo` each set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint demo bench clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=23.1"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# pytest exits 5 when no test is marked slow; that is not a failure.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/l2p generate --prompt "a red circle left of a yellow triangle" --out outputs/demo.png

bench: $(STAMP)
	$(BIN)/python bench/step_cost.py
	$(BIN)/python bench/flops.py
	$(BIN)/python bench/cfg_batching.py
	$(BIN)/python bench/fp8_memory.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/compile.py

clean:
	rm -rf $(VENV) build *.egg-info outputs
