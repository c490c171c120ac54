"""Registers the "Attribution report" page in the Airflow UI.

The page is a FastAPI app (``attribution_report_app.py``) mounted at ``/attribution-report/`` and
shown in the UI's navigation as an external view. Airflow loads plugins in every component,
task processes included, so this module stays cheap: the app is built on its first request, and
nothing here touches a database or a connection.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/attribution-report"


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


report_app = LazyApp("attribution_report.attribution_report_app:create_app")


class AttributionReportPlugin(AirflowPlugin):
    """The report page: a FastAPI app and its entry in the UI's navigation."""

    name = "attribution_report"
    fastapi_apps = [
        {"app": report_app, "url_prefix": URL_PREFIX, "name": "Attribution report"},
    ]
    external_views = [
        {
            "name": "Attribution report",
            "href": f"{URL_PREFIX}/",
            "url_route": "attribution-report",
            "destination": "nav",
            "icon": f"{URL_PREFIX}/icon.svg",
        },
    ]
