# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orderhub demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e and not postgres"

# TPC-H through the whole pipeline vs a raw bulk load vs dlt (bench/README.md): SF=0.1 or SF=1
SF ?= 0.1
DB ?= sqlite,postgres
bench: $(STAMP)
	$(BIN)/python -m bench.run --sf $(SF) --db $(DB)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf var .pytest_cache
