# The two commands a fresh machine needs: `make demo` and `make test`.
# Everything they need comes from uv.lock: the machine needs only Python 3.10+.
#
# uv itself is bootstrapped from PyPI into .tools/ (a pinned wheel); it uses the machine's
# interpreter (never downloads one) and keeps the project's environment in .venv/.
# Every target syncs .venv to the lock first (`uv sync --locked`: a stale lock fails,
# packages the lock does not name are removed), so every run installs the same versions.
# npm is needed only for the chain tests' tools (anvil, solc-js): `make contracts`, which
# `make install` and `make test` run; `make demo` and the other targets never call npm.
PYTHON     ?= python3
TOOLS      ?= .tools
UV_VERSION := 0.13.9
UV         := $(TOOLS)/bin/uv
PY         := .venv/bin/python
PYTEST_ARGS ?=

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := .venv
export UV_NO_PROGRESS := 1
SYNC := $(UV) sync --locked --all-extras --python $(PYTHON) --quiet

.PHONY: venv contracts install demo test test-unit lint format typecheck spell bench test-latest test-lowest clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The Python side: .venv from uv.lock, every extra and the models (no npm).
venv: | $(UV)
	$(SYNC)

# The local EVM (anvil) and solc-js for the chain tests (contracts/package-lock.json).
contracts: contracts/node_modules/.package-lock.json

contracts/node_modules/.package-lock.json: contracts/package-lock.json
	npm ci --prefix contracts --no-audit --no-fund --ignore-scripts --loglevel=error

# Everything a developer needs: the Python side and the chain tests' tools.
install: venv contracts

demo: venv
	$(PY) -m langchain_fabstir.cli demo

lint: venv
	$(PY) -m ruff check langchain_fabstir tests examples bench
	$(PY) -m ruff format --check langchain_fabstir tests examples bench
	.venv/bin/codespell langchain_fabstir tests examples bench README.md

typecheck: venv
	$(PY) -m mypy

format: venv
	$(PY) -m ruff format langchain_fabstir tests examples bench
	$(PY) -m ruff check --fix langchain_fabstir tests examples bench

spell: venv
	.venv/bin/codespell langchain_fabstir tests examples bench README.md

# Everything CI needs: the lock is current (install fails otherwise), lint, types, then the whole suite (unit,
# integration with the real model, faults, storage). pytest exits 5 when it collected
# no test: that must fail, not pass silently.
# Two workers (pytest-xdist), one per core: most tests wait on sockets and timers.
test: contracts lint typecheck
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The inner loop: unit tests and doctests only, every network socket off, 30 s a test.
test-unit: venv
	$(PY) -m pytest -q tests/unit_tests langchain_fabstir --disable-socket --allow-unix-socket --timeout 30 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: venv
	$(PY) -m bench.run

# Outside CI. The suite against the newest versions the bounds allow (early warning of
# drift) and against the lowest direct versions (proof of the floors). Each re-locks in a
# scratch copy of the tree; the committed lock and .venv are left alone.
test-latest: | $(UV)
	UV=$(abspath $(UV)) PYTHON=$(PYTHON) sh scripts/test-resolution.sh highest $(PYTEST_ARGS)

test-lowest: | $(UV)
	UV=$(abspath $(UV)) PYTHON=$(PYTHON) sh scripts/test-resolution.sh lowest-direct $(PYTEST_ARGS)

clean:
	rm -rf .venv $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
