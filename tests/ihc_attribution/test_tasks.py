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
