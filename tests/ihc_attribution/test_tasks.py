"""Task glue: metrics counters."""

from __future__ import annotations

from ihc_attribution import tasks
from ihc_attribution.ihc_client import SendSummary


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
