"""Task glue: metrics counters."""

from __future__ import annotations

from ihc_attribution import tasks
from ihc_attribution.ihc.client import SendSummary


def test_api_metrics_say_what_they_count(monkeypatch):
    from airflow.sdk.observability.stats import Stats

    calls: dict[str, int] = {}
    monkeypatch.setattr(Stats, "incr", lambda name, count=1, *a, **k: calls.__setitem__(name, count))
    tasks._emit_api_metrics(
        SendSummary(requests_sent=7, requests_answered=5, attempts=10, retries=3, journeys_answered=40,
                    journeys_rejected=2, unanswered=[4, 5])
    )
    assert calls == {
        "ihc_attribution.api.requests_sent": 7,
        "ihc_attribution.api.requests_answered": 5,
        "ihc_attribution.api.requests_failed": 2,
        "ihc_attribution.api.attempts": 10,
        "ihc_attribution.api.retries": 3,
        "ihc_attribution.api.journeys_answered": 40,
        "ihc_attribution.api.journeys_rejected": 2,
    }


# --- the range of a run: scheduled runs look back for late data ---------------------------------

import datetime as dt  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
from airflow.utils.types import DagRunType  # noqa: E402

INTERVAL = {
    "data_interval_start": dt.datetime(2024, 1, 10, tzinfo=dt.timezone.utc),
    "data_interval_end": dt.datetime(2024, 1, 11, tzinfo=dt.timezone.utc),
}


@pytest.mark.parametrize(
    ("run_type", "late_days", "first"),
    [
        (DagRunType.SCHEDULED, None, "2024-01-07"),  # the default: 3 days
        (DagRunType.SCHEDULED, "0", "2024-01-10"),
        (DagRunType.SCHEDULED, "5", "2024-01-05"),
        (DagRunType.BACKFILL_JOB, None, "2024-01-10"),  # history: exactly its day
        (DagRunType.MANUAL, None, "2024-01-10"),
    ],
)
def test_a_scheduled_run_covers_the_late_data_days_before_its_interval(monkeypatch, run_type, late_days, first):
    if late_days is not None:
        monkeypatch.setenv("ATTRIBUTION_LATE_DATA_DAYS", late_days)
    rng = tasks.run_range({**INTERVAL, "params": {}, "dag_run": SimpleNamespace(run_type=run_type)})
    assert (rng.first_date.isoformat(), rng.last_date.isoformat()) == (first, "2024-01-10")


def test_params_of_a_scheduled_run_are_its_range_as_given(monkeypatch):
    params = {"start_date": "2024-01-02", "end_date": "2024-01-03"}
    rng = tasks.run_range({**INTERVAL, "params": params, "dag_run": SimpleNamespace(run_type=DagRunType.SCHEDULED)})
    assert rng.label == "2024-01-02_2024-01-03"


def test_a_run_started_later_in_the_day_or_by_the_loader_s_asset_handles_the_day_before(monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_LATE_DATA_DAYS", "0")
    six = {"data_interval_start": dt.datetime(2024, 1, 9, 6, tzinfo=dt.timezone.utc),
           "data_interval_end": dt.datetime(2024, 1, 10, 6, tzinfo=dt.timezone.utc)}
    scheduled = tasks.run_range({**six, "params": {}, "dag_run": SimpleNamespace(run_type=DagRunType.SCHEDULED)})
    assert (scheduled.start_ts, scheduled.end_ts) == ("2024-01-09 00:00:00", "2024-01-10 00:00:00")
    loader = SimpleNamespace(run_type=DagRunType.ASSET_TRIGGERED, run_after=dt.datetime(2024, 1, 10, 2, 30))
    by_asset = tasks.run_range({"params": {}, "dag_run": loader})
    assert by_asset == scheduled


def test_the_schedule_time_and_the_loader_s_asset_are_settings_of_the_dag(monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetOrTimeSchedule

    from tests.helpers import ROOT

    monkeypatch.setenv("ATTRIBUTION_SCHEDULE_CRON", "0 6 * * *")
    monkeypatch.setenv("ATTRIBUTION_SOURCE_ASSET", "postgres://warehouse:5432/db/raw/conversions")
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution")
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 6 * * *"
    assert dag.timetable.asset_condition.uri == "postgres://warehouse:5432/db/raw/conversions"
