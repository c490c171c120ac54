# Local Airflow without Docker, and the browser test of its UI (docs/ui.md).
#   make up        start api-server, scheduler, dag-processor and the local IHC server
#   make up EXECUTOR=celery WORKERS=2 [WAREHOUSE=postgres]
#                  the same with the CeleryExecutor: two Celery workers on the local Redis, the
#                  PostgreSQL metadata database and (WAREHOUSE=postgres) a PostgreSQL attribution database
#   make down      stop them
#   make status    what runs
#   make airflow ARGS="backfill create --dag-id ihc_attribution --from-date 2024-01-01 --to-date 2024-01-03"
#   make e2e       browser test against the local Airflow (starts and stops it if it is not running)
#   make e2e-celery  a 3-day backfill on two Celery workers and a PostgreSQL warehouse (its own stack, ports and databases)
.PHONY: up down status airflow e2e e2e-celery

# `down` and `status` work before `make install` too: they need psutil (an Airflow dependency)
# only once `up` has recorded processes.
UP_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
E2E_PLAYWRIGHT ?= playwright==1.65.2

UP_OPTS = $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(WAREHOUSE),--warehouse $(WAREHOUSE))

up: $(STAMP)
	$(PY) scripts/airflow_up.py up $(UP_OPTS) $(ARGS)

down:
	$(UP_PY) scripts/airflow_up.py down $(ARGS)

status:
	@$(UP_PY) scripts/airflow_up.py status

airflow: $(STAMP)
	@$(PY) scripts/airflow_up.py airflow $(ARGS)

e2e: $(STAMP)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		echo "installing Debian's chromium for the browser test ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q "$(E2E_PLAYWRIGHT)"
	@# The checks are counted with pytest's assertion pass hook; a module rewritten without it
	@# (make test collects these too) is cached without the hook's calls.
	rm -f tests/ui/e2e/__pycache__/*-pytest-*.pyc
	RUN_E2E=1 $(PY) -m pytest -q -p no:cacheprovider -o enable_assertion_pass_hook=true tests/ui/e2e $(PYTEST_ARGS)

e2e-celery: $(STAMP)
	RUN_E2E_CELERY=1 $(PY) -m pytest -q -p no:cacheprovider tests/e2e_celery $(PYTEST_ARGS)
