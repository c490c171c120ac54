"""ATTRIBUTION_FAILURE_NOTIFIERS: notifiers of your own on a failed run, without editing the DAG.

A failed run (a bad range: its first task fails at once) through ``dag.test()`` calls them; the
SMTP provider's ``SmtpNotifier``, wired as docs/operations.md shows, delivers its e-mail to a local SMTP server.
"""

from __future__ import annotations

import email
import json
import socketserver
import threading

import pytest

from tests.dags import notifier_factories
from tests.helpers import ROOT

BAD_RANGE = {"start_date": "2024-01-04", "end_date": "2024-01-01"}


def _dag(monkeypatch, paths: str):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("ATTRIBUTION_FAILURE_NOTIFIERS", paths)
    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture
def smtp_server():
    """A minimal SMTP server on a free port: the messages it received, as text."""
    received: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"220 localhost ready\r\n")
            while line := self.rfile.readline():
                command = line.strip().upper()
                if command.startswith((b"EHLO", b"HELO")):
                    self.wfile.write(b"250 localhost\r\n")
                elif command == b"DATA":
                    self.wfile.write(b"354 go on\r\n")
                    body = []
                    while (data := self.rfile.readline()) not in (b".\r\n", b""):
                        body.append(data.decode())
                    received.append("".join(body))
                    self.wfile.write(b"250 queued\r\n")
                elif command == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:  # MAIL FROM, RCPT TO, RSET, NOOP
                    self.wfile.write(b"250 ok\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def test_the_setting_adds_the_named_notifiers_to_the_dag_s_failure_callbacks(monkeypatch, airflow_db):
    from ihc_attribution.notify import NotifierFactory, RunFailureNotifier

    bag = _dag(monkeypatch, "tests.dags.notifier_factories:recording, tests.dags.notifier_factories.email")
    assert bag.import_errors == {}
    callbacks = bag.get_dag("ihc_attribution").on_failure_callback
    assert isinstance(callbacks[0], RunFailureNotifier)
    assert [c.path for c in callbacks[1:] if isinstance(c, NotifierFactory)] == [
        "tests.dags.notifier_factories:recording", "tests.dags.notifier_factories.email"]


def test_by_default_only_the_package_s_own_notifier(monkeypatch, airflow_db):
    from ihc_attribution.notify import RunFailureNotifier

    callbacks = _dag(monkeypatch, "").get_dag("ihc_attribution").on_failure_callback
    assert len(callbacks) == 1 and isinstance(callbacks[0], RunFailureNotifier)


@pytest.mark.parametrize("path", ["tests.dags.notifier_factories:missing", "no_such_module:factory",
                                  "tests.dags.notifier_factories:CALLS"])
def test_a_wrong_path_is_an_import_error_of_the_dag_naming_the_setting(monkeypatch, airflow_db, path):
    bag = _dag(monkeypatch, path)
    (error,) = bag.import_errors.values()
    assert "ATTRIBUTION_FAILURE_NOTIFIERS" in error and path in error


@pytest.mark.slow
def test_each_failed_run_gets_a_fresh_notifier_and_a_broken_one_hides_no_other(monkeypatch, airflow_db):
    paths = "tests.dags.notifier_factories:broken, tests.dags.notifier_factories:recording"
    dag = _dag(monkeypatch, paths).get_dag("ihc_attribution")
    notifier_factories.CALLS.clear()
    runs = [dag.test(run_conf=BAD_RANGE) for _ in range(2)]
    assert [r.state for r in runs] == ["failed", "failed"]
    assert [c["message"] for c in notifier_factories.CALLS] == [f"run {r.run_id} failed" for r in runs]


def test_the_readme_s_email_notifier_delivers_a_failed_run_s_mail(monkeypatch, airflow_db, smtp_server):
    port, received = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {"disable_ssl": True, "disable_tls": True}}))
    dag = _dag(monkeypatch, "tests.dags.notifier_factories:email").get_dag("ihc_attribution")
    dagrun = dag.test(run_conf=BAD_RANGE)
    assert dagrun.state == "failed"
    (raw,) = received
    mail = email.message_from_string(raw)
    assert mail["Subject"] == f"ihc_attribution run {dagrun.run_id} failed"
    assert (mail["To"], mail["From"]) == ("data-team@example.com", "airflow@example.com")
    (html,) = [part.get_payload(decode=True).decode() for part in mail.walk() if part.get_content_type() == "text/html"]
    assert html == f"Run {dagrun.run_id} failed in task setup_tables (task_failure)."
