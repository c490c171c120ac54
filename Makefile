# Entry points of the package. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(CURDIR)/plugins

.PHONY: install test test-slow test-all lint demo run backfill ihc-server demo-data calibrate bench clean

# The project is installed the way users install it (editable here): the provider and the
# plugin reach Airflow through their entry points. The dev tools (local IHC server, demo data)
# are a second distribution, include/ihc_attribution_dev, that the production wheel leaves out.
DEV_DIST := include/ihc_attribution_dev

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml $(DEV_DIST)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e ".[postgres,celery]" -e $(DEV_DIST)
	@# The build leaves its metadata next to the sources, which the editable install puts on the
	@# path: Airflow would then see the distribution, and its entry points, twice.
	rm -rf include/*.egg-info $(DEV_DIST)/*.egg-info
	touch $(STAMP)

install: $(STAMP)

# make test is the fast default; the tests marked slow (end to end through Airflow, property and
# crash tests) run with make test-slow, and make test-all runs both. CI runs make test, then make
# test-slow.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

ihc-server: $(STAMP)
	exec $(PY) -m ihc_attribution_dev.server $(ARGS)

demo-data: $(STAMP)
	$(PY) -m ihc_attribution_dev.demo_data $(ARGS)

calibrate: $(STAMP)
	$(PY) scripts/calibrate_ihc_model.py $(ARGS)

clean: down
	rm -rf .airflow .run output

demo: $(STAMP)
	$(PY) scripts/local_run.py demo

run: $(STAMP)
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make run START=YYYY-MM-DD END=YYYY-MM-DD"; exit 2; }
	$(PY) scripts/local_run.py run --start $(START) --end $(END)

backfill: $(STAMP)
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD"; exit 2; }
	$(PY) scripts/local_run.py backfill --start $(START) --end $(END)

# Further targets (local Airflow, benchmarks) live in mk/.
-include mk/*.mk
