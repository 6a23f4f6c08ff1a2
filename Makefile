# The two commands a newcomer needs: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INTEROP_STAMP := .interop/.installed

.PHONY: demo test lint typecheck unit interop-setup bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Real third-party peers for the interop tests: js-libp2p/helia on Node 22 (npm) and
# py-libp2p in its own venv (PyPI).
$(INTEROP_STAMP): scripts/setup-interop.sh tests/interop/js/package.json tests/interop/js/package-lock.json tests/interop/py/requirements.txt
	bash scripts/setup-interop.sh
	mkdir -p .interop && touch $(INTEROP_STAMP)

interop-setup: $(INTEROP_STAMP)

demo: $(STAMP)
	$(PY) -m peerstack.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m 'not interop'

test: $(STAMP) $(INTEROP_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

bench: $(STAMP) $(INTEROP_STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-pylibp2p .interop tests/interop/js/node_modules .mypy_cache .ruff_cache .pytest_cache
