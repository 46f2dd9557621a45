# The README's commands. Each target creates .venv when missing and installs into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# zennit 1.0.0 beside the 0.5.1 of .venv: the Zennit tests run against both releases.
ZENNIT1 := .zennit1
ZENNIT1_STAMP := $(ZENNIT1)/zennit/__init__.py
ZENNIT1_TESTS := tests/ctc/test_composite.py tests/ctc/test_within.py tests/test_canonizers.py \
	tests/test_canonizers_on_the_model.py \
	tests/features/test_relevance.py tests/ctc/test_zennit_user_combinations.py

.PHONY: setup chromium demo test test-slow docs bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,docs,bench]'
	touch $(STAMP)

$(ZENNIT1_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps --ignore-requires-python --target $(ZENNIT1) zennit==1.0.0

# Debian's Chromium for the browser test of the docs site (tests/docs); without it that test is
# skipped with a message saying so.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "chromium could not be installed (needs root and apt-get): the browser docs test will be skipped"

setup: $(STAMP) chromium

demo: $(STAMP)
	$(BIN)/ctc-plugin demo --out out/demo.png

# The site is built first: tests/docs/test_site_renders.py opens that build (CTC_DOCS_SITE).
# Not with -q: it hides the warnings, and --strict then has none to fail on (a cross-reference
# to a name no page shows is a warning).
test: $(STAMP) $(ZENNIT1_STAMP) chromium
	$(BIN)/ruff check ctc_plugin tests benchmarks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site
	CTC_DOCS_SITE=site $(BIN)/python -m pytest -n 2 --dist worksteal -q
	CTC_EXPECT_ZENNIT=1.0.0 PYTHONPATH=$(ZENNIT1) $(BIN)/python -m pytest -n 2 -q $(ZENNIT1_TESTS)

test-slow: $(STAMP) $(ZENNIT1_STAMP)
	$(BIN)/python -m pytest -n 2 -q -m slow
	CTC_EXPECT_ZENNIT=1.0.0 PYTHONPATH=$(ZENNIT1) $(BIN)/python -m pytest -n 2 -q -m slow $(ZENNIT1_TESTS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check ctc_plugin tests benchmarks
	$(BIN)/ruff format --check ctc_plugin tests benchmarks

clean:
	rm -rf $(VENV) $(ZENNIT1) site out
