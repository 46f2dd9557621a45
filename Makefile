# The README's commands. Each target creates .venv when missing and installs into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow docs bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,docs,bench]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ctc-plugin demo --out out/demo.png

test: $(STAMP)
	$(BIN)/ruff check ctc_plugin tests benchmarks
	$(BIN)/python -m pytest -n 2 -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m slow

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check ctc_plugin tests benchmarks
	$(BIN)/ruff format --check ctc_plugin tests benchmarks

clean:
	rm -rf $(VENV) site out
