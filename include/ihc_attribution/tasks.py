"""The DAG's task bodies: the task's context in, one stage run on the ``attribution_db`` database, a small dict out.

Connections are looked up only here, at run time, never when the DAG file is parsed.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from typing import Any, NoReturn

from ihc_attribution import api_stage, charts, checks, credit, daterange, export, journeys, load, report, schema, settings
from ihc_attribution.db import SUPPORTED_CONN_TYPES, Database
from ihc_attribution.errors import PermanentError, PermanentFailure
from ihc_attribution.ihc.client import SendProgress, SendSummary

log = logging.getLogger(__name__)


def run_range(context: Mapping[str, Any]) -> daterange.RunRange:
    """The run's range from its params or its data interval (see :mod:`daterange`).

    A scheduled run also covers the ``$ATTRIBUTION_LATE_DATA_DAYS`` days before its interval, so
    that data loaded after the runs of those days is attributed; backfills and manual runs cover
    exactly their interval or params.
    """
    params = context.get("params") or {}
    dag_run = context.get("dag_run")
    run_type = str(getattr(dag_run, "run_type", "")).lower()
    if daterange.range_from_params(params) is None and run_type.endswith(("scheduled", "asset_triggered")):
        started = context.get("data_interval_end") or getattr(dag_run, "run_after", None)
        if started is not None:
            return daterange.day_before(started, settings.get("late_data_days"))
    return daterange.resolve_run_range(params, context.get("data_interval_start"), context.get("data_interval_end"))


def _lookback_days(context: Mapping[str, Any]) -> int | None:
    return daterange.parse_lookback_days((context.get("params") or {}).get("lookback_days"))


def _flag_param(context: Mapping[str, Any], name: str, default: bool) -> bool:
    value = (context.get("params") or {}).get(name, default)
    if not isinstance(value, bool):
        raise daterange.ParamError(f"param {name}={value!r} must be true or false")
    return value


def stage(func: Callable[[Mapping[str, Any], Database], dict]) -> Callable[[Mapping[str, Any]], dict]:
    """Run a stage on the pipeline database, closed when it ends. Its result needs no log line of its own:
    Airflow's ``@task`` logs the value a task returns.

    A :class:`PermanentError`, which every retry would raise again, fails it in one log line
    (:func:`fail_permanently`); other errors keep the task's retries and Airflow's traceback.
    """

    @functools.wraps(func)
    def run(context: Mapping[str, Any]) -> dict:
        try:
            with open_db() as db:
                return func(context, db)
        except PermanentError as exc:
            fail_permanently(exc)

    return run


def fail_permanently(exc: PermanentError) -> NoReturn:
    """Log ``exc`` in one line and end the task with :class:`PermanentFailure`: no traceback, no retry."""
    text = " ".join(str(exc).splitlines())
    message = f"{type(exc).__name__}: {text} (not retried: a retry would fail the same way)"
    log.error("%s", message)
    raise PermanentFailure(message) from exc


def open_db(conn_id: str | None = None) -> closing[Database]:
    """The pipeline database, through the ``attribution_db`` connection and its provider's ``DbApiHook``.

    :raises PermanentError: for a type the pipeline does not run on, or a provider not installed.
    """
    from airflow.sdk import BaseHook

    conn_id = conn_id or settings.get("db_conn_id")
    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type not in SUPPORTED_CONN_TYPES:
        raise PermanentError(f"connection {conn_id!r} has type {conn.conn_type!r}; the attribution database must be "
                             f"one of: {', '.join(sorted(SUPPORTED_CONN_TYPES))}")
    if conn.conn_type == "sqlite" and conn.host and conn.host != ":memory:" and not os.path.isfile(conn.host):
        # Opening it would create an empty file, and the run would "succeed" on no data.
        raise PermanentError(f"connection {conn_id!r}: the SQLite file {conn.host} does not exist")
    try:
        hook = conn.get_hook()
    except Exception as exc:  # the provider of a supported type is missing or broken
        raise PermanentError(
            f"connection {conn_id!r} of type {conn.conn_type!r} needs {SUPPORTED_CONN_TYPES[conn.conn_type]} "
            f"installed ({type(exc).__name__}: {exc})"
        ) from exc
    return closing(Database.from_hook(hook))


def answer_scope(settings: Any, account: str = "") -> str:
    """What decides an answer besides the journey: the account, the API's host, conv type and redistribution.

    ``account`` is a digest of the API key (another account has another trained model), never
    the key. The port is left out: the local IHC server of ``make run`` listens on a new free
    port each time, and it is the same service.
    """
    from urllib.parse import urlsplit

    url = urlsplit(settings.base_url)
    return json.dumps(
        [account, url.hostname, url.path.rstrip("/"), settings.conv_type_id, settings.redistribution_parameter],
        sort_keys=True,
        default=str,
    )


def _ihc_hook(max_concurrency: int | None = None):
    from ihc_attribution.ihc.hook import IhcHook

    return IhcHook(ihc_conn_id=settings.get("ihc_conn_id"), max_concurrency=max_concurrency)


@stage
def setup_tables(context: Mapping[str, Any], db: Database) -> dict:
    """Validate the run's range, check that the source tables can be read, and set up the package's tables."""
    rng = run_range(context)
    daterange.check_range_length(rng)
    _lookback_days(context)
    log.info("run %s handles conversions in [%s, %s)", context.get("run_id"), rng.start_ts, rng.end_ts)
    retention_days = settings.get("staging_retention_days")
    schema.check_sources(db)
    schema.ensure_schema(db)
    for advice in schema.index_advice(db):
        log.info("an index on your source tables would speed up every run (the package never creates it): %s", advice)
    purged = schema.purge_staging(db, _now(-retention_days), keep_run_id=context.get("run_id"))
    if purged:
        log.info("purged the staging of %d runs older than %d days", purged, retention_days)
    return {"range_start": rng.start_ts, "range_end": rng.end_ts}


@stage
def extract_journeys(context: Mapping[str, Any], db: Database) -> dict:
    """Stage the run's conversions and their journeys; quarantine malformed input."""
    client = _ihc_hook().get_conn()
    return journeys.extract_journeys(
        db,
        context["run_id"],
        run_range(context),
        lookback_days=_lookback_days(context),
        created_at=_now(),
        answer_scope=answer_scope(client.settings, client.account_digest),
        reuse_answers=_flag_param(context, "reuse_answers", True),
        max_sessions=client.settings.max_sessions_per_request,
        reattribute_drift=_flag_param(context, "reattribute_drift", False),
    ).as_dict()


@stage
def pack_requests(context: Mapping[str, Any], db: Database) -> dict:
    """Plan the API requests under the connection's limits."""
    settings = _ihc_hook().settings
    summary = api_stage.pack_requests(
        db,
        context["run_id"],
        max_journeys=settings.max_journeys_per_request,
        max_sessions=settings.max_sessions_per_request,
        oversized_policy=settings.oversized_journey_policy,
    )
    log.info(
        "the API stage will send %d requests holding %d journeys and %d sessions (%d journeys reuse earlier answers)",
        summary.requests, summary.journeys, summary.sessions, summary.reused,
    )
    return summary.as_dict()


@stage
def call_ihc_api(context: Mapping[str, Any], db: Database) -> dict:
    """Send the unanswered requests of the run through the IHC hook; answers are checkpointed one by one."""
    if _flag_param(context, "dry_run", False):
        from airflow.sdk.exceptions import AirflowSkipException

        planned = context["ti"].xcom_pull(task_ids="pack_requests") or {}
        raise AirflowSkipException(
            f"dry run: nothing sent; a run would send {planned.get('requests', '?')} requests holding "
            f"{planned.get('journeys', '?')} journeys and {planned.get('sessions', '?')} sessions"
        )
    # Requests in flight = the slots of the pool ihc_api this task holds: one number, the setting ihc_concurrency.
    hook = _ihc_hook(getattr(context.get("task"), "pool_slots", None))
    settings = hook.settings
    started = time.monotonic()
    summary = SendSummary()
    try:
        with hook.stop_on_sigterm():
            api_stage.send_requests(
                db,
                context["run_id"],
                hook,
                max_sessions=settings.max_sessions_per_request,
                max_rejected_share=settings.max_rejected_share,
                progress=_progress_logger(),
                summary=summary,
            )
    finally:
        hook.close()
        _emit_api_metrics(summary)
    log.info("IHC API stage done in %.1f s", time.monotonic() - started)
    return summary.as_dict()


def _emit_api_metrics(summary: SendSummary) -> None:
    """The API stage's counters as Airflow metrics ``ihc_attribution.api.<name>`` (StatsD or OpenTelemetry when on)."""
    from airflow.sdk.observability.stats import Stats

    for name in ("requests_sent", "requests_answered", "requests_failed", "attempts", "retries", "journeys_answered",
                 "journeys_rejected"):
        Stats.incr(f"ihc_attribution.api.{name}", getattr(summary, name))


def _progress_logger(every_seconds: float = 10.0):
    """Log progress of the API stage at most every few seconds, and at the end."""
    last = 0.0

    def progress(p: SendProgress) -> None:
        nonlocal last
        finished = p.total is not None and p.done >= p.total
        if time.monotonic() - last < every_seconds and not finished:
            return
        last = time.monotonic()
        elapsed = max(p.elapsed_seconds, 1e-9)
        rate, journey_rate = p.done / elapsed, p.journeys_answered / elapsed
        eta = f"{(p.total - p.done) / rate:.0f} s" if rate > 0 and p.total is not None else "unknown"
        log.info(
            "IHC API: %d/%s requests done, %.0f journeys/s, %d retries so far, %d journeys rejected, "
            "estimated time left %s",
            p.done, p.total if p.total is not None else "?", journey_rate, p.retries, p.journeys_rejected, eta,
        )

    return progress


@stage
def load_attribution(context: Mapping[str, Any], db: Database) -> dict:
    """Publish the run's answers and issues."""
    return load.load_attribution(db, context["run_id"], run_range(context)).as_dict()


@stage
def build_report(context: Mapping[str, Any], db: Database) -> dict:
    """Rebuild channel_reporting for every date the run touched."""
    summary = report.build_report(
        db,
        context["run_id"],
        run_range(context),
        refresh_spend=_flag_param(context, "refresh_spend", False),
        lookback_days=_lookback_days(context),
        triggered_at=_triggered_at(context),
        built_at=_now(),
    )
    return {**summary, "table_uri": db.table_uri(schema.CHANNEL_REPORTING)}


def _now(days: int = 0) -> str:
    """Now, or ``days`` from now, in UTC as the package's tables store times."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")


def _triggered_at(context: Mapping[str, Any]) -> str | None:
    """When the run was created or queued (UTC), for telling report builds apart."""
    for attr in ("queued_at", "run_after", "start_date", "logical_date"):
        if (value := getattr(context.get("dag_run"), attr, None)) is not None:
            return daterange.as_naive_utc(value).isoformat(sep=" ")
    return None


@stage
def export_csv(context: Mapping[str, Any], db: Database) -> dict:
    """Write the range's report as CSV, and a chart of it next to it; return their paths and
    ``report_url``, the range's page of the *Attribution report* in the Airflow UI."""
    rng = run_range(context)
    first, last = rng.first_date.isoformat(), rng.last_date.isoformat()
    url = charts.report_url(first, last)
    rows = export.read_report(db, rng)
    extra = credit.model_columns(db, first, last) if settings.get("csv_model_columns") else None
    db.abandon_reads()  # no snapshot or lock is held while the files are written (an upload may take long)
    base = export.output_base(settings.output_location(), settings.get("output_conn_id") or None)
    csv_file = export.write_csv(
        rows, export.csv_path(base, rng), escape_formulas=settings.get("csv_escape_formulas"), extra=extra
    )
    chart = charts.write_chart(
        rows, charts.chart_path(csv_file), f"Channel report {first} to {last}", csv_name=csv_file.name,
        report_url=url,
    )
    log.info("wrote %d report rows to %s and a chart to %s; report page: %s", len(rows), csv_file, chart, url)
    # "path"/"chart" stay plain file paths for local outputs (what readers on the same host open).
    local = export.is_local(csv_file)
    return {
        "url": str(csv_file),
        "chart_url": str(chart),
        "path": csv_file.path if local else str(csv_file),
        "chart": chart.path if local else str(chart),
        "rows": len(rows),
        "first_date": first,
        "last_date": last,
        "report_url": url,
    }


@stage
def check_run(context: Mapping[str, Any], db: Database) -> dict:
    """Fail the run if a conversion of its range is neither attributed nor recorded."""
    summary = checks.check_run(db, context["run_id"], run_range(context))
    log.info("run summary\n%s", summary.render())
    if summary.note:
        log.warning("%s", summary.note)
    return summary.as_dict()
