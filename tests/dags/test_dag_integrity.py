"""The DAG file: imports cleanly, is wired as documented, does nothing at parse time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS = [
    "setup_tables",
    "extract_journeys",
    "pack_requests",
    "call_ihc_api",
    "load_attribution",
    "build_report",
    "export_csv",
    "check_run",
]


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["ihc_attribution"]


def test_dag_shape(dagbag):
    dag = dagbag.get_dag("ihc_attribution")
    assert dag.catchup is False
    assert dag.max_active_runs == 4, "the Backfill dialog allows up to the DAG's max_active_runs"
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert [t.task_id for t in dag.topological_sort()] == TASKS
    for upstream, downstream in zip(TASKS, TASKS[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert set(dag.params) >= {"start_date", "end_date", "lookback_days"}
    assert dag.params["reattribute_drift"] is False, "re-attributing changed days is opt-in"
    assert dag.doc_md and "attribution" in dag.doc_md


def test_params_have_descriptions_and_date_format(dagbag):
    params = dagbag.get_dag("ihc_attribution").params
    for name in ("start_date", "end_date"):
        schema = params.get_param(name).schema
        assert schema["format"] == "date"
        assert params.get_param(name).description


def test_tasks_retry_by_default(airflow_db):
    """Outside tests, tasks retry: the API stage resumes where it stopped."""
    env = {k: v for k, v in os.environ.items() if k != "ATTRIBUTION_TASK_RETRIES"}
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"d = DagBag(dag_folder={str(ROOT / 'dags')!r}).get_dag('ihc_attribution');"
        "print(sorted({t.retries for t in d.tasks}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[2]"


def test_parsing_looks_up_no_connection_and_opens_no_socket(monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook

    def forbidden(*args, **kwargs):
        raise AssertionError("the DAG file must not reach out at parse time")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(forbidden))
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert "ihc_attribution" in bag.dags


def test_csv_export_publishes_an_asset(dagbag):
    dag = dagbag.get_dag("ihc_attribution")
    outlets = dag.get_task("export_csv").outlets
    assert [o.name for o in outlets] == ["ihc_channel_reporting_csv"]
    assert outlets[0].uri.rstrip("/") == "ihc-attribution://channel_reporting"


def test_parsing_does_not_load_the_stage_code(airflow_db):
    """The dag-processor parses the file often: pandas and requests wait until a task runs."""
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r}); assert 'ihc_attribution' in bag.dags;"
        "print(sorted(m for m in ('pandas', 'requests', 'ihc_attribution.tasks') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_readiness_task_by_default(dagbag):
    """Off by default: the DAG is the plain daily schedule of its eight stages."""
    assert "wait_for_data" not in dagbag.get_dag("ihc_attribution").task_ids


def test_the_readiness_check_is_a_setting_that_adds_a_deferrable_first_task(monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from ihc_attribution.readiness import WaitForData

    monkeypatch.setenv("ATTRIBUTION_WAIT_FOR_DATA_MINUTES", "240")
    monkeypatch.setenv("ATTRIBUTION_WAIT_POKE_SECONDS", "90")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("ihc_attribution")
    assert [t.task_id for t in dag.topological_sort()] == ["wait_for_data", *TASKS]
    assert dag.get_task("setup_tables").upstream_task_ids == {"wait_for_data"}
    wait = dag.get_task("wait_for_data")
    assert isinstance(wait, WaitForData) and (wait.wait_minutes, wait.poke_seconds) == (240, 90)
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable", "the schedule stays the daily one"


def test_runs_at_once_are_a_setting(monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("ATTRIBUTION_MAX_ACTIVE_RUNS", "1")
    assert DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution").max_active_runs == 1
