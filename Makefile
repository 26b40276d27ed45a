# ado-ray — `make demo` runs a real batch on sample repositories; `make test` runs everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install servers agents forge-schemas browser lint test test-fast bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# PostgreSQL and Redis server binaries for the tests (found on PATH or installed with apt).
servers:
	@bash .ci/servers.sh

# The agent CLIs (Claude Code, Codex, Gemini CLI) at pinned versions, in .agents/.
agents:
	@bash .ci/agent-clis.sh

# GitHub's OpenAPI description (@octokit/openapi, pinned), which the forge stand-ins answer in.
forge-schemas:
	@bash .ci/forge-schemas.sh

# Headless Chromium (apt), which opens the HTML report in its rendering test.
browser:
	@bash .ci/browser.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: lint servers agents forge-schemas browser
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not integration and not e2e"

bench: install servers forge-schemas
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/sink.py
	$(BIN)/python bench/limiter.py
	$(BIN)/python bench/forge.py
	$(BIN)/python bench/allrepos.py
	$(BIN)/python bench/scale.py

demo: install
	$(BIN)/python examples/demo.py

clean:
	rm -rf .ado .pytest_cache .mypy_cache .ruff_cache build *.egg-info
