# Two commands a user needs: `make demo` and `make test`. Each creates .venv if missing and
# installs the pinned dependencies (requirements.txt: torch 2.13.0, the CPU wheel where pip is configured with
# one; elsewhere install torch from https://download.pytorch.org/whl/cpu first, as the README says), tracemark
# and the CPU test world (testworld/: the tiny model and `tracemark sim`, a distribution of its own), both editable.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench bench-learn eval-quick eval clean

$(STAMP): requirements.txt pyproject.toml testworld/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps -e testworld
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/python examples/demo.py

bench: $(STAMP)
	$(PY) bench/bench_protect.py

bench-learn: $(STAMP)
	$(PY) -m pytest -q -m slow tests

eval-quick: $(STAMP)
	$(PY) -m research.eval run --quick

eval: $(STAMP)
	$(PY) -m research.eval run

clean:
	rm -rf demo_out bench_out .pytest_cache
