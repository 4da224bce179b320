# fisher-merge: `make run` sets everything up and runs the service, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
# The CPU build lies on this workplace's disk; a GPU deployment sets TORCH_SPEC (see docker/).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: install run demo test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: install
	$(BIN)/python -m app.synthetic $(DEMO)
	FM_CACHE_URI=$(DEMO)/cache $(BIN)/fisher-merge up

demo: install
	$(BIN)/python -m app.synthetic $(DEMO)
	FM_CACHE_URI=$(DEMO)/cache $(BIN)/fisher-merge merge --config $(DEMO)/merge.json --overwrite

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/merge_bench.py
	$(BIN)/python bench/fisher_bench.py
	$(BIN)/python bench/service_bench.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache
