"""Registers the report pages (``app.py``, mounted at ``/attribution-report/``, "Reports" in the
UI's navigation) and the extra link "Attribution report" of an ``ihc_attribution`` run's ``export_csv``.

Airflow loads plugins in every component, so importing this opens no database and builds no app.
The link is computed in the API server, where the Task SDK's ``XCom.get_value`` cannot be used (it
talks to a task's supervisor): it takes the run's range from the attribution database, where the
run recorded it, the range ``export_csv`` writes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from ihc_attribution.daterange import RunRange, as_naive_utc
from ihc_attribution.report_ui import sources
from ihc_attribution.settings import DAG_ID

URL_PREFIX = "/attribution-report"
EXPORT_TASK_ID = "export_csv"
# The navigation bar has room for a short word under each icon.
NAV_LABEL = "Reports"
# Where a run's range is recorded: attribution_runs from the run's first data stage until the
# staging retention purges it, attribution_run_results from the run's final check on, for good.
RUN_RANGE_TABLES = ("attribution_runs", "attribution_run_results")

log = logging.getLogger(__name__)


class LazyApp:
    """An ASGI app that builds the real one on its first request (in the event loop, so only once)."""

    def __init__(self, factory_path: str) -> None:
        self.factory_path = factory_path

    @functools.cached_property
    def app(self) -> Any:
        module_name, _, attr = self.factory_path.partition(":")
        return getattr(importlib.import_module(module_name), attr)()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


report_app = LazyApp("ihc_attribution.report_ui.app:create_app")


def report_link(run_id: str) -> str:
    """The report page of the run's range, or "" before the run recorded it; raises ``DatabaseUnavailable``."""
    from ihc_attribution.charts import report_url

    with contextlib.closing(sources.open_db()) as db:
        for table in filter(db.has_table, RUN_RANGE_TABLES):
            rows = db.query(f"SELECT range_start, range_end FROM {table} WHERE run_id = ?", (run_id,))
            if rows:
                # The same first and last date as export_csv takes from the same range.
                rng = RunRange(as_naive_utc(str(rows[0][0])), as_naive_utc(str(rows[0][1])))
                return report_url(rng.first_date.isoformat(), rng.last_date.isoformat())
    return ""


class AttributionReportLink(BaseOperatorLink):
    """"Attribution report" on ``export_csv``: registered for every operator (the DAG file need not change),
    empty, so not shown, on other tasks and until the run has recorded its range."""

    name = "Attribution report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if ti_key.dag_id != DAG_ID or ti_key.task_id != EXPORT_TASK_ID:
            return ""
        try:
            return report_link(ti_key.run_id)
        except sources.DatabaseUnavailable as exc:  # e.g. the connection is not set for the API server
            log.warning("no Attribution report link for %s: %s", ti_key, exc)
        except Exception:  # a link must never break the task page
            log.exception("could not build the Attribution report link of %s", ti_key)
        return ""


class AttributionReportPlugin(AirflowPlugin):
    """The report pages: a FastAPI app, its entry in the UI's navigation, and the run's link to it."""

    name = "attribution_report"
    fastapi_apps = [{"app": report_app, "url_prefix": URL_PREFIX, "name": "Attribution report"}]
    external_views = [
        {
            "name": NAV_LABEL,
            "href": f"{URL_PREFIX}/",
            "url_route": "attribution-report",
            "destination": "nav",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        },
    ]
    global_operator_extra_links = [AttributionReportLink()]
