"""The data-aware start: the trigger that waits for the day's conversions, and the task that defers to it.

The trigger's ``run()`` is driven here against a real SQLite file through the ``attribution_db``
connection, as the triggerer drives it; the whole DAG waiting and then running is in
``tests/dags/test_dag_e2e.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from types import SimpleNamespace

import pytest
from airflow.utils.types import DagRunType

from ihc_attribution import readiness
from ihc_attribution.errors import PermanentFailure
from ihc_attribution.readiness import ConversionsPresentTrigger, WaitForData
from tests.helpers import make_db

DAY = "2024-01-03"


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "challenge.db"
    make_db(path, sessions=[], conversions=[("c-other-day", "u1", "2024-01-02", "10:00:00", 10.0)], costs=[])
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def _insert(path, conv_id, day=DAY):
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO conversions VALUES (?, 'u1', ?, '09:30:00', 25.0)", (conv_id, day))


def _deadline(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()


def test_the_trigger_waits_while_the_day_has_no_conversions_and_fires_once_they_are_inserted(db):
    trigger = ConversionsPresentTrigger(DAY, _deadline(60), poke_seconds=0.05)

    async def scenario():
        first_event = asyncio.ensure_future(anext(trigger.run()))
        await asyncio.sleep(1.0)
        assert not first_event.done(), "no conversions of the day yet: the trigger keeps waiting"
        _insert(db, "c1")
        _insert(db, "c2")
        return await asyncio.wait_for(first_event, timeout=5)

    event = asyncio.run(scenario())
    assert event.payload["status"] == "ready"
    assert (event.payload["day"], event.payload["conversions"]) == (DAY, 2)
    # it counted again and again while it waited, without blocking the event loop (the sleep above ran)
    assert event.payload["waited_seconds"] >= 1.0 and event.payload["checks"] >= 5, event.payload


def test_the_trigger_fires_a_timeout_event_at_its_deadline(db):
    trigger = ConversionsPresentTrigger(DAY, _deadline(0.5), poke_seconds=0.1)

    async def first_event():
        return await asyncio.wait_for(anext(trigger.run()), timeout=10)

    event = asyncio.run(first_event())
    assert event.payload["status"] == "timeout" and event.payload["day"] == DAY and event.payload["error"] is None
    assert event.payload["checks"] >= 3


def test_a_count_that_fails_is_tried_again_and_named_at_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "gone.db")}))
    trigger = ConversionsPresentTrigger(DAY, _deadline(0.3), poke_seconds=0.1)
    event = asyncio.run(asyncio.wait_for(anext(trigger.run()), timeout=10))
    assert event.payload["status"] == "timeout"
    assert "does not exist" in event.payload["error"]


def test_the_trigger_serializes_to_what_recreates_it():
    trigger = ConversionsPresentTrigger(DAY, "2024-01-04T06:00:00+00:00", poke_seconds=30, conn_id="warehouse")
    classpath, kwargs = trigger.serialize()
    assert classpath == "ihc_attribution.readiness.ConversionsPresentTrigger"
    from airflow.sdk.module_loading import import_string

    again = import_string(classpath)(**kwargs)
    assert again.serialize() == (classpath, kwargs)


# --- the task ----------------------------------------------------------------------------------

INTERVAL = {
    "data_interval_start": dt.datetime(2024, 1, 3, tzinfo=dt.timezone.utc),
    "data_interval_end": dt.datetime(2024, 1, 4, tzinfo=dt.timezone.utc),
}


def _context(run_type, params=None):
    return {**INTERVAL, "params": params or {}, "dag_run": SimpleNamespace(run_type=run_type, run_after=None)}


def _task():
    return WaitForData(task_id="wait_for_data", wait_minutes=30, poke_seconds=15)


@pytest.mark.parametrize(
    ("run_type", "params", "waits"),
    [
        (DagRunType.SCHEDULED, None, True),
        (DagRunType.ASSET_TRIGGERED, None, True),
        (DagRunType.MANUAL, None, True),  # triggered without a range: the latest day
        (DagRunType.MANUAL, {"start_date": "2024-01-01", "end_date": "2024-01-03"}, False),
        (DagRunType.BACKFILL_JOB, None, False),
    ],
)
def test_runs_of_the_latest_day_wait_backfills_and_ranges_do_not(run_type, params, waits):
    assert readiness.waits_for_data(_context(run_type, params)) is waits


def test_the_task_goes_on_at_once_when_the_day_has_conversions(db, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_LATE_DATA_DAYS", "0")
    _insert(db, "c1")
    assert _task().execute(_context(DagRunType.SCHEDULED)) == {"day": DAY, "conversions": 1, "waited_seconds": 0}


def test_the_task_defers_to_the_trigger_when_the_day_has_none(db, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    monkeypatch.setenv("ATTRIBUTION_LATE_DATA_DAYS", "3")  # the window's last day is still the day before the run
    before = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(TaskDeferred) as deferred:
        _task().execute(_context(DagRunType.SCHEDULED))
    trigger = deferred.value.trigger
    assert isinstance(trigger, ConversionsPresentTrigger)
    assert (trigger.day, trigger.poke_seconds, trigger.conn_id) == (DAY, 15, "attribution_db")
    deadline = dt.datetime.fromisoformat(trigger.deadline)
    assert dt.timedelta(minutes=29) < deadline - before < dt.timedelta(minutes=31)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == dt.timedelta(minutes=30) + readiness.DEFERRAL_GRACE


def test_a_backfill_day_without_conversions_goes_on_without_waiting(db):
    assert _task().execute(_context(DagRunType.BACKFILL_JOB))["conversions"] == 0


def test_the_task_fails_in_one_line_when_the_wait_ends_without_data(caplog):
    event = {"status": "timeout", "day": DAY, "checks": 120, "waited_seconds": 1800.0, "error": None}
    with pytest.raises(PermanentFailure) as failure:
        _task().execute_complete({}, event)
    message = str(failure.value)
    assert message.startswith(f"DataNotReadyError: no conversions of {DAY} after waiting 30 minutes")
    assert "clear this task" in message and "\n" not in message
    assert caplog.records[-1].getMessage() == message and not caplog.records[-1].exc_info


def test_the_task_goes_on_when_the_trigger_found_the_data():
    event = {"status": "ready", "day": DAY, "conversions": 7, "checks": 3, "waited_seconds": 95.2}
    assert _task().execute_complete({}, event) == {"day": DAY, "conversions": 7, "waited_seconds": 95.2}


def test_the_task_checks_the_range_first(db):
    with pytest.raises(PermanentFailure, match="RangeError: param end_date is missing"):
        _task().execute(_context(DagRunType.MANUAL, {"start_date": "2024-01-01"}))


def test_an_unreadable_source_fails_the_task_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    with pytest.raises(PermanentFailure, match="SourceTableError: source table .* cannot be read"):
        _task().execute(_context(DagRunType.SCHEDULED))
