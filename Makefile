# The two commands a new user needs: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup test bench lock clean help

help:
	@echo "make setup   - create .venv with Airflow, TensorFlow, Horovod and the project (idempotent)"
	@echo "make test    - install what is missing, then run every test"
	@echo "make bench   - run the benchmarks (ratios measured in the same run) into bench/results.json"
	@echo "make lock    - regenerate requirements/constraints.txt from the current .venv"

setup:
	@bash scripts/setup.sh

test: setup
	@$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	@$(PY) -m bench $(BENCH_ARGS)

lock:
	@$(VENV)/bin/pip freeze --exclude-editable | grep -v -E '^(horovod|tlpipe|cmake)==' > requirements/constraints.txt
	@echo "wrote requirements/constraints.txt"

clean:
	rm -rf $(VENV) build *.egg-info
