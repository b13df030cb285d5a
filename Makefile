# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The folder operator/ would shadow the standard library's `operator` for `python -m` run from here.
export PYTHONSAFEPATH := 1

.PHONY: setup demo test test-slow lint crds
setup:
	./scripts/setup.sh

demo: setup
	$(VENV)/bin/exfm run -f examples/synthetic --workdir .exfm/demo
	$(VENV)/bin/exfm report --workdir .exfm/demo --out .exfm/demo/report

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

crds: setup
	$(VENV)/bin/exfm crds --out crds
	./scripts/sync-chart-crds.sh
