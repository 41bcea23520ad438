# Parley: `make run` starts the suite, `make test` sets everything up and runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf

.PHONY: install run test protos check-protos lint-protos bench clean bubblewrap system-tools redis-server chromium

# The virtual environment, with Parley and its development tools installed in it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# buf (protobuf linter), the openai SDK, playwright-core and axe-core (the tests' tools) come from npm.
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The web console (console/: TypeScript, Preact, Vite), built into console/dist, which the REST
# edge serves at /. Rebuilt when its sources or its lock file change.
CONSOLE_BUILD   := console/dist/index.html
CONSOLE_SOURCES := $(shell find console/src console/public -type f 2>/dev/null) console/index.html \
                   console/vite.config.ts console/tsconfig.json

console/node_modules/.installed: console/package.json console/package-lock.json
	cd console && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CONSOLE_BUILD): console/node_modules/.installed $(CONSOLE_SOURCES)
	cd console && npm run --silent build

# The sandbox's own Python (ipykernel, numpy, pandas, matplotlib), mounted read-only in every
# sandbox. Its interpreter must be readable by the sandboxes' unprivileged uids, so the
# system's python3 is preferred over one under a home directory (pyenv under /root is not).
SANDBOX_VENV   := .venv-sandbox
SANDBOX_STAMP  := $(SANDBOX_VENV)/.installed
SANDBOX_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))

$(SANDBOX_STAMP): services/sandbox/runtime-requirements.txt constraints.txt
	test -x $(SANDBOX_VENV)/bin/python || $(SANDBOX_PYTHON) -m venv $(SANDBOX_VENV) || $(PYTHON) -m venv $(SANDBOX_VENV)
	$(SANDBOX_VENV)/bin/python -m pip install --quiet -c constraints.txt -r services/sandbox/runtime-requirements.txt
	touch $@

# bubblewrap, the sandbox's walls: installed from Debian's package when we are root and it is
# missing; anywhere else (or if that fails) the sandbox refuses executions and says why.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; }; } || \
	  echo "make: bubblewrap is not installed; the sandbox will refuse code execution (install the 'bubblewrap' package)"

# Debian's docker-compose (`config` checks of docker-compose.yml) and prometheus (promtool and a
# real server for the alert rules and scrape tests), where root can install them; elsewhere
# (or if that fails) nothing happens and those checks need them installed by hand.
system-tools:
	@{ command -v docker-compose && command -v promtool && command -v prometheus; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -qq docker-compose prometheus >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq docker-compose prometheus >/dev/null 2>&1; }; }; } || \
	  echo "make: docker-compose/prometheus are not installed; the deploy and alert-rule checks need them"

# redis-server, for the tests of the shared rate limits and caches (tests/conftest.py starts
# its own on a free port): Debian's package when we are root and it is missing. `make run`
# does not need it (in-memory limits and caches unless PARLEY_REDIS_URL is set).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; }; }; } || \
	  command -v redis-server >/dev/null 2>&1 || \
	  echo "make: redis-server is not installed; the Redis tests need it (Debian's 'redis-server' package) or PARLEY_TEST_REDIS_URL"

# Debian's chromium, for the console's browser tests (tests/console drive it with playwright-core;
# no browser is downloaded): installed when we are root and it is missing. It is large, so without
# recommended packages.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  command -v chromium >/dev/null 2>&1 || \
	  echo "make: chromium is not installed; the console's browser tests need it (Debian's 'chromium' package)"

install: $(STAMP) $(BUF) $(CONSOLE_BUILD) $(SANDBOX_STAMP) bubblewrap system-tools redis-server chromium

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
	rm -rf $(VENV) node_modules console/node_modules console/dist .pytest_cache
