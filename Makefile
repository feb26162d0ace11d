# BitRouter: `make run` serves on the built-in defaults, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AGENTS := .agents
AGENTS_STAMP := $(AGENTS)/.installed

.PHONY: install agents run test bench clean

install: $(STAMP)

$(STAMP): setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The real agent CLIs for tests/test_agents.py, pinned in tests/agents/package.json.
agents: $(AGENTS_STAMP)

$(AGENTS_STAMP): tests/agents/package.json
	mkdir -p $(AGENTS)
	cp tests/agents/package.json $(AGENTS)/package.json
	cd $(AGENTS) && npm install --no-audit --no-fund --loglevel=error
	touch $(AGENTS_STAMP)

run: install
	$(BIN)/bitrouter serve

test: install agents
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) $(AGENTS) *.egg-info .pytest_cache
