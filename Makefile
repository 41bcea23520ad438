# Parley: `make run` starts the suite, `make test` sets everything up and runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf

.PHONY: install run test protos check-protos lint-protos bench clean

# The virtual environment, with Parley and its development tools installed in it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# buf (protobuf linter) comes from npm.
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(BUF)

run: $(STAMP)
	$(PY) -m services

# Regenerates parley/**/_pb2*.py(i) from protos/.
protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint-protos: $(BUF)
	$(BUF) lint

# The suite includes the buf lint and generated-code drift checks (tests/protos).
test: install
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache
