"""Registers the "Attribution report" pages in the Airflow UI, and the link to them from a run.

The pages are a FastAPI app (``app.py``) mounted at ``/attribution-report/``
and shown in the UI's navigation as an external view, labelled "Reports". The extra link
"Attribution report" on the ``export_csv`` task of an ``ihc_attribution`` run opens the report of
that run's range. Airflow loads plugins in every component, task processes included, so this
module stays cheap: the app is built on its first request, and nothing here touches a database
or a connection.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk.bases.operatorlink import BaseOperatorLink

URL_PREFIX = "/attribution-report"
DAG_ID = "ihc_attribution"
EXPORT_TASK_ID = "export_csv"
# The navigation bar has room for a short word under each icon.
NAV_LABEL = "Reports"

log = logging.getLogger(__name__)


class LazyApp:
    """An ASGI app that builds the real one on its first request."""

    def __init__(self, factory_path: str) -> None:
        self._factory_path = factory_path
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                module_name, _, attr = self._factory_path.partition(":")
                self._app = getattr(importlib.import_module(module_name), attr)()
        return self._app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        app = self._app if self._app is not None else self._build()
        await app(scope, receive, send)


report_app = LazyApp("ihc_attribution.report_ui.app:create_app")


def _export_result(ti_key: Any) -> dict | None:
    """The XCom ``return_value`` of an ``export_csv`` task instance, read in the API server."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key="return_value", run_id=ti_key.run_id, dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id, map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if row is None:
        return None
    value = row.value
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict) and "__data__" in value:  # serde's envelope
        value = value["__data__"]
    return value if isinstance(value, dict) else None


def report_link_for(result: dict | None) -> str:
    """The report page of an export's range: its ``report_url``, else built from its dates."""
    if not result:
        return ""
    if isinstance(result.get("report_url"), str) and result["report_url"]:
        return result["report_url"]
    first, last = result.get("first_date"), result.get("last_date")
    if not (isinstance(first, str) and isinstance(last, str)):
        return ""
    from ihc_attribution.charts import report_url

    return report_url(first, last)


class AttributionReportLink(BaseOperatorLink):
    """"Attribution report" on the ``export_csv`` task: the report page of the run's range.

    Registered for every operator (the DAG file need not change); empty, so not shown, for any
    other task and before the export has run.
    """

    name = "Attribution report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if ti_key.dag_id != DAG_ID or ti_key.task_id != EXPORT_TASK_ID:
            return ""
        try:
            return report_link_for(_export_result(ti_key))
        except Exception:  # a link must never break the task page
            log.exception("could not build the Attribution report link of %s", ti_key)
            return ""


class AttributionReportPlugin(AirflowPlugin):
    """The report pages: a FastAPI app, its entry in the UI's navigation, and the run's link to it."""

    name = "attribution_report"
    fastapi_apps = [
        {"app": report_app, "url_prefix": URL_PREFIX, "name": "Attribution report"},
    ]
    external_views = [
        {
            "name": NAV_LABEL,
            "href": f"{URL_PREFIX}/",
            "url_route": "attribution-report",
            "destination": "nav",
            "icon": f"{URL_PREFIX}/icon.svg",
        },
    ]
    global_operator_extra_links = [AttributionReportLink()]
