"""The failure notifier: always logs, posts to the alert webhook when one is configured."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from ihc_attribution import notify


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


def _context():
    # a serialized DAG in a callback's context has no template environment
    return {
        "dag": SimpleNamespace(dag_id="ihc_attribution"),
        "dag_run": SimpleNamespace(run_id="manual__2024-01-01"),
        "ti": SimpleNamespace(task_id="call_ihc_api", log_url="http://airflow/log/1"),
        "reason": "task_failure",
    }


def test_a_failure_is_posted_to_the_alert_connection(webhook, monkeypatch):
    port, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_ALERTS", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                                      "port": port, "schema": "http"}))
    notify.RunFailureNotifier()(_context())
    assert received == [{"text": "ihc_attribution run manual__2024-01-01 failed in task call_ihc_api (task_failure) "
                                 "log: http://airflow/log/1"}]


def test_without_an_alert_connection_the_failure_is_only_logged(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_ATTRIBUTION_ALERTS", raising=False)
    assert notify.post_alert("run x failed") is False
    assert "run x failed" in caplog.text


def test_a_missed_deadline_is_posted(webhook, monkeypatch):
    port, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_ALERTS", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                                      "port": port, "schema": "http"}))
    asyncio.run(notify.deadline_missed(_context(), hours=6))
    assert received == [{"text": "ihc_attribution run manual__2024-01-01 has not finished 6 h after it was queued"}]


def test_a_failed_task_ends_its_own_log_with_the_alert_and_the_error_in_one_line(caplog):
    from types import SimpleNamespace

    from ihc_attribution.notify import log_task_failure

    ti = SimpleNamespace(task_id="setup_tables", log_url="http://airflow/log/1")
    context = {"ti": ti, "dag_run": SimpleNamespace(run_id="manual__1"),
               "exception": ValueError("param end_date=2024-01-01 is before start_date\n(details)")}
    with caplog.at_level("ERROR"):
        log_task_failure(context)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("ALERT ihc_attribution run manual__1 failed in task setup_tables (ValueError) "
                    "log: http://airflow/log/1: param end_date=2024-01-01 is before start_date")
