# Local Airflow without Docker, and the browser test of its UI (docs/ui.md).
#   make up        start api-server, scheduler, dag-processor and the local IHC server
#   make down      stop them
#   make status    what runs
#   make airflow ARGS="backfill create --dag-id ihc_attribution --from-date 2024-01-01 --to-date 2024-01-03"
#   make e2e       browser test against the local Airflow (starts and stops it if it is not running)
.PHONY: up down status airflow e2e

# `down` and `status` need only the standard library, so they work before `make install` too.
UP_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
E2E_PLAYWRIGHT ?= playwright==1.65.2

up: $(STAMP)
	$(PY) scripts/airflow_up.py up $(ARGS)

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
	RUN_E2E=1 $(PY) -m pytest -q -p no:cacheprovider tests/ui/e2e $(PYTEST_ARGS)
