"""Task glue: metrics counters."""

from __future__ import annotations

from include.attribution import tasks
from include.attribution.api_stage import SendSummary


def test_api_metrics_are_counted(monkeypatch):
    from airflow.sdk.observability.stats import Stats

    calls: dict[str, int] = {}
    monkeypatch.setattr(Stats, "incr", lambda name, count=1, *a, **k: calls.__setitem__(name, count))
    tasks._emit_api_metrics(SendSummary(requests_sent=7, retries=3, rejected_journeys=2, unanswered=[4, 5]))
    assert calls == {
        "ihc_attribution.api.requests": 7,
        "ihc_attribution.api.retries": 3,
        "ihc_attribution.api.rejected_journeys": 2,
        "ihc_attribution.api.failed_requests": 2,
    }
