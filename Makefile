# `make demo` / `make test` create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-all test env bench docs-tables clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hgadapter demo --out runs/demo

demo-all: $(STAMP)
	$(PY) -m hgadapter demo --all --out runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

# every results table in README.md and docs/*.md, from the run records docs/tables.yaml names
docs-tables: $(STAMP)
	$(PY) -m hgadapter.doctables

bench: $(STAMP)
	$(PY) experiments/bench_engines.py --out runs/bench/engines.json

clean:
	rm -rf $(VENV) runs
