"""The DAG's task bodies: Airflow context in, a stage of the package run, small results out.

Each function takes the task's context, opens the database through the ``attribution_db``
connection, runs one stage and returns a small dict for XCom (counts, ids, paths). Connections
are looked up only here, at run time, never when the DAG file is parsed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from include.attribution import api_stage, charts, checks, export, journeys, load, report, schema
from include.attribution.daterange import RunRange, resolve_run_range
from include.attribution.db import Database
from include.attribution.ihc_client import IhcConfigurationError

log = logging.getLogger(__name__)

#: The stages, in the order of the DAG's tasks (one task per stage, named like its function).
STAGES = (
    "setup_tables",
    "extract_journeys",
    "pack_requests",
    "call_ihc_api",
    "load_attribution",
    "build_report",
    "export_csv",
    "check_run",
)

DB_CONN_ID = os.environ.get("ATTRIBUTION_DB_CONN_ID", "attribution_db")
IHC_CONN_ID = os.environ.get("IHC_CONN_ID", "ihc_api")


def output_dir() -> str:
    """Where CSVs go: ``$ATTRIBUTION_OUTPUT_DIR``, default ``output/``."""
    return os.environ.get("ATTRIBUTION_OUTPUT_DIR", "output")


def run_range(context: Mapping[str, Any]) -> RunRange:
    """The run's range from its params or its data interval (see :mod:`daterange`)."""
    return resolve_run_range(
        context.get("params") or {},
        context.get("data_interval_start"),
        context.get("data_interval_end"),
    )


def _lookback_days(context: Mapping[str, Any]) -> int | None:
    """The ``lookback_days`` param: None when not given, else a whole number of days >= 1.

    :raises ValueError: naming the param, for anything else (text, fractions, booleans, < 1).
    """
    value = (context.get("params") or {}).get("lookback_days")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    days = None
    if isinstance(value, int) and not isinstance(value, bool):
        days = value
    elif isinstance(value, float) and value.is_integer():
        days = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        days = int(value.strip())
    if days is None or days < 1:
        raise ValueError(f"param lookback_days={value!r} must be a whole number of days, at least 1")
    return days


@contextmanager
def open_db() -> Iterator[Database]:
    """The pipeline database, through the Airflow connection ``attribution_db``."""
    from airflow.sdk import BaseHook

    hook = BaseHook.get_hook(DB_CONN_ID)
    db = Database(hook.get_conn())
    try:
        yield db
    finally:
        db.close()


def _ihc_hook():
    from include.attribution.ihc_hook import IhcHook

    return IhcHook(ihc_conn_id=IHC_CONN_ID)


@contextmanager
def _fail_without_retry() -> Iterator[None]:
    """Turn an IHC configuration error into a task failure that Airflow does not retry.

    A wrong key, an unknown conv type or a limit above the account's gets the same answer on
    every attempt: a task retry would only send more requests and delay the failure.
    """
    try:
        yield
    except IhcConfigurationError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{exc} (not retried: fix the connection, then clear the task)") from exc


def setup_tables(context: Mapping[str, Any]) -> dict:
    """Validate the run's range, then create the tables and indexes the pipeline needs."""
    rng = run_range(context)
    _lookback_days(context)
    log.info("run %s handles conversions in [%s, %s)", context.get("run_id"), rng.start_ts, rng.end_ts)
    retention_days = int(os.environ.get("ATTRIBUTION_STAGING_RETENTION_DAYS", "30"))
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=retention_days)
    with open_db() as db:
        schema.ensure_schema(db)
        purged = schema.purge_staging(db, cutoff.strftime("%Y-%m-%d %H:%M:%S"), keep_run_id=context.get("run_id"))
    if purged:
        log.info("purged the staging of %d runs older than %d days", purged, retention_days)
    return {"range_start": rng.start_ts, "range_end": rng.end_ts}


def extract_journeys(context: Mapping[str, Any]) -> dict:
    """Stage the run's conversions and their journeys; quarantine malformed input."""
    rng = run_range(context)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with open_db() as db:
        summary = journeys.extract_journeys(
            db, context["run_id"], rng, lookback_days=_lookback_days(context), created_at=created
        )
    log.info("extracted %s", summary.as_dict())
    return summary.as_dict()


def pack_requests(context: Mapping[str, Any]) -> dict:
    """Plan the API requests under the connection's limits."""
    with _fail_without_retry():
        settings = _ihc_hook().settings
    with open_db() as db:
        summary = api_stage.pack_requests(
            db,
            context["run_id"],
            max_journeys=settings.max_journeys_per_request,
            max_sessions=settings.max_sessions_per_request,
            oversized_policy=settings.oversized_journey_policy,
        )
    log.info("packed %s", summary.as_dict())
    return summary.as_dict()


def call_ihc_api(context: Mapping[str, Any]) -> dict:
    """Send the unanswered requests of the run; answers are checkpointed one by one."""
    hook = _ihc_hook()
    with _fail_without_retry():
        client = hook.get_conn()
    started = time.monotonic()
    summary = api_stage.SendSummary()
    try:
        with open_db() as db, _fail_without_retry():
            summary = api_stage.send_requests(
                db,
                context["run_id"],
                client,
                max_sessions=hook.settings.max_sessions_per_request,
                progress=_progress_logger(started),
                summary=summary,
            )
    finally:
        _emit_api_metrics(summary)
    log.info("IHC API stage done in %.1f s: %s", time.monotonic() - started, summary.as_dict())
    return summary.as_dict()


def _emit_api_metrics(summary: api_stage.SendSummary) -> None:
    """Counters for dashboards, through Airflow's metrics (StatsD or OpenTelemetry when on)."""
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # metrics are optional
        return
    Stats.incr("ihc_attribution.api.requests", summary.requests_sent)
    Stats.incr("ihc_attribution.api.retries", summary.retries)
    Stats.incr("ihc_attribution.api.rejected_journeys", summary.rejected_journeys)
    Stats.incr("ihc_attribution.api.failed_requests", len(summary.unanswered))


def _progress_logger(started: float, every_seconds: float = 10.0):
    """Log progress of the API stage at most every few seconds, and at the end."""
    last = [0.0]

    def progress(p, journeys_done: int) -> None:
        now = time.monotonic()
        finished = p.total is not None and p.done >= p.total
        if now - last[0] < every_seconds and not finished:
            return
        last[0] = now
        rate = p.done / p.elapsed_seconds if p.elapsed_seconds > 0 else 0.0
        journey_rate = journeys_done / p.elapsed_seconds if p.elapsed_seconds > 0 else 0.0
        eta = f"{(p.total - p.done) / rate:.0f} s" if rate > 0 and p.total is not None else "unknown"
        log.info(
            "IHC API: %d/%s requests done, %.0f journeys/s, %d retries so far, %d journeys rejected, "
            "estimated time left %s",
            p.done, p.total if p.total is not None else "?", journey_rate, p.retries, p.failed_journeys, eta,
        )

    return progress


def load_attribution(context: Mapping[str, Any]) -> dict:
    """Publish the run's answers and issues."""
    with open_db() as db:
        summary = load.load_attribution(db, context["run_id"], run_range(context))
    log.info("loaded %s", summary.as_dict())
    return summary.as_dict()


def build_report(context: Mapping[str, Any]) -> dict:
    """Rebuild channel_reporting for every date the run touched."""
    with open_db() as db:
        summary = report.build_report(
            db,
            context["run_id"],
            lookback_days=_lookback_days(context),
            triggered_at=_triggered_at(context),
            built_at=_now(),
        )
    log.info("report rebuilt: %s", summary.as_dict())
    return summary.as_dict()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _triggered_at(context: Mapping[str, Any]) -> str | None:
    """When the run was created or queued (UTC), for telling report builds apart."""
    dag_run = context.get("dag_run")
    for attr in ("run_after", "queued_at", "start_date", "logical_date"):
        value = getattr(dag_run, attr, None) if dag_run is not None else None
        if value is not None:
            return _as_text_utc(value)
    return None


def _as_text_utc(value: Any) -> str:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def export_csv(context: Mapping[str, Any]) -> dict:
    """Write the range's report as CSV, and a chart of it next to it; return their paths.

    The result (XCom) and the log also carry ``report_url``: the range's page of the
    *Attribution report* in the Airflow UI (base URL from ``$ATTRIBUTION_UI_BASE_URL`` or
    ``[api] base_url``).
    """
    rng = run_range(context)
    first, last = rng.first_date.isoformat(), rng.last_date.isoformat()
    url = charts.report_url(first, last)
    with open_db() as db:
        rows = export.read_report(db, rng)
    csv_file = export.write_csv(rows, export.csv_path(output_dir(), rng)).resolve()
    chart = charts.write_chart(
        rows, charts.chart_path(csv_file), f"Channel report {first} to {last}", csv_name=csv_file.name,
        report_url=url,
    ).resolve()
    log.info("wrote %d report rows to %s and a chart to %s", len(rows), csv_file, chart)
    log.info("report page: %s", url)
    return {
        "path": str(csv_file),
        "chart": str(chart),
        "rows": len(rows),
        "first_date": first,
        "last_date": last,
        "report_url": url,
    }


def check_run(context: Mapping[str, Any]) -> dict:
    """Fail the run if a conversion of its range is neither attributed nor recorded."""
    with open_db() as db:
        summary = checks.check_run(db, context["run_id"], run_range(context))
    log.info("run summary\n%s", summary.render())
    return summary.as_dict()
