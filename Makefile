# The two commands a new user needs: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo demo-down demo-status shell test chaos lint format bench lock clean help

help:
	@echo "make setup   - create .venv with Airflow, TensorFlow, Horovod and the project (idempotent)"
	@echo "make demo    - install what is missing, then run the whole pipeline on this machine (Ctrl-C stops)"
	@echo "make demo-down - stop the demo's services"
	@echo "make demo-status - each demo component (PostgreSQL, SeaweedFS, localcloud, Airflow's four) and its health"
	@echo "make shell   - a shell with the demo's Airflow environment (airflow dags test, tasks test, ...)"
	@echo "make test    - install what is missing, then lint and run every test"
	@echo "make chaos   - the fault-injection suite alone (servers down 30 s), its table from var/chaos/results.json"
	@echo "make lint    - ruff check and ruff format --check (make format rewrites)"
	@echo "make bench   - run the benchmarks (ratios measured in the same run) into bench/results.json"
	@echo "make lock    - regenerate requirements/constraints.txt from the current .venv"

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) scripts/demo.py up $(DEMO_ARGS)

demo-down:
	@$(PY) scripts/demo.py down

demo-status:
	@$(PY) scripts/demo.py status

shell:
	@$(PY) scripts/demo.py shell

test: setup lint
	@$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

chaos: setup
	@TLPIPE_CHAOS_OUTAGE_SECONDS=$${TLPIPE_CHAOS_OUTAGE_SECONDS:-30} $(PY) -m pytest -p no:cacheprovider -m chaos $(PYTEST_ARGS)
	@$(PY) scripts/chaos_table.py

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: setup
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .

bench: setup
	@$(PY) -m bench $(BENCH_ARGS)

lock:
	@$(VENV)/bin/pip freeze --exclude-editable | grep -v -E '^(horovod|tlpipe|cmake)( @ |==)' > requirements/constraints.txt
	@echo "wrote requirements/constraints.txt"
	@$(PY) scripts/pin_requirements.py

clean:
	rm -rf $(VENV) build *.egg-info
