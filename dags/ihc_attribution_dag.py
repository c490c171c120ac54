"""
### IHC attribution

For every conversion of the run's range: build its customer journey, ask the IHC attribution
API how much credit each session earned, store the credit in `attribution_customer_journey`,
rebuild `channel_reporting` (cost, attributed orders and revenue per channel and day) and export
it as CSV with CPO and ROAS.

**Range.** A scheduled run handles the conversions of its data interval (one UTC day). A manual
run gives `start_date` and `end_date` (inclusive, `YYYY-MM-DD`) in the trigger form.

**Connections.** `attribution_db` (the database) and `ihc_api` (the API; the key is the
password, limits and conversion type are extras); optionally `attribution_alerts`, a webhook
that gets a line when a run fails or misses its deadline. CSVs go to `$ATTRIBUTION_OUTPUT_BASE_URL`
(a URL or a folder; default `$ATTRIBUTION_OUTPUT_DIR`, `output/`).

Every task can be re-run on its own; conversions that cannot be attributed are listed in
`attribution_issues` with a reason, and the last task fails the run if one is missing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import (
    Asset,
    AssetAlias,
    AssetOrTimeSchedule,
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    dag,
    get_current_context,
    task,
)

from ihc_attribution import settings
from ihc_attribution.errors import NoRetryOnPermanentFailure
from ihc_attribution.notify import deadline_missed, failure_callbacks, log_task_failure
from ihc_attribution.readiness import WaitForData

# The earliest data interval the DAG accepts. Backfills and `airflow dags test` refuse logical
# dates before it, so the default lies before any data this package is likely to see; scheduled
# runs are unaffected (catchup is off).
START_DATE = datetime.fromisoformat(settings.get("start_date")).replace(tzinfo=timezone.utc)
# A run still unfinished this many hours after it was queued raises an alert. Opt-in: Airflow
# 3.3's `dags test` (the local runner) cannot run a DAG that has a deadline.
DEADLINE_HOURS = settings.get("deadline_hours")

# Updated by every export, with the CSV's path and dates in the event's extra. The URI is fixed
# (not the output folder) so that one asset stays one asset wherever the files go.
CHANNEL_REPORT = Asset(name="ihc_channel_reporting_csv", uri="ihc-attribution://channel_reporting")
# Updated by every report build: the table channel_reporting under its standard URI, which depends
# on the connection, looked up only when the task runs; so the task attaches it to this alias then.
REPORT_TABLE = AssetAlias(name="ihc_channel_reporting_table")


def date_param(title: str, description: str) -> Param:
    """An optional inclusive date (YYYY-MM-DD) of a manual run."""
    return Param(None, type=["null", "string"], format="date", pattern=r"^\d{4}-\d{2}-\d{2}$", title=title,
                 description=description)


def publish_table(events, result: dict) -> None:
    events[REPORT_TABLE].add(Asset(uri=result["table_uri"]), extra=result)


def publish_csv(events, result: dict) -> None:
    events[CHANNEL_REPORT].extra = result


# Daily at $ATTRIBUTION_SCHEDULE_CRON (UTC, default midnight); with $ATTRIBUTION_SOURCE_ASSET set,
# an update of that asset by the users' loader starts a run too, so the day is attributed as soon
# as its data is there. Either way a run handles the calendar day before it started.
DAILY = CronDataIntervalTimetable(settings.get("schedule_cron"), timezone="UTC")
SOURCE_ASSET = settings.get("source_asset")
SCHEDULE = AssetOrTimeSchedule(timetable=DAILY, assets=Asset(uri=SOURCE_ASSET)) if SOURCE_ASSET else DAILY


@dag(
    dag_id=settings.DAG_ID,
    schedule=SCHEDULE,
    start_date=START_DATE,
    catchup=False,
    # Several runs at once (a backfill from the UI takes up to this many) are safe: staging is keyed
    # by run, writers take the database's write lock in turn, the pool bounds the API requests.
    max_active_runs=settings.get("max_active_runs"),
    doc_md=__doc__,
    tags=["attribution", "ihc"],
    default_args={
        "retries": settings.get("task_retries"),
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        # A bad param or a failed check fails its task in one log line, without a retry.
        "retry_policy": NoRetryOnPermanentFailure(),
        # A stage that hangs fails (and is retried) instead of holding the DAG's run slot.
        "execution_timeout": timedelta(minutes=settings.get("task_timeout_minutes")),
        "on_failure_callback": log_task_failure,
    },
    # The alert webhook, plus the notifiers $ATTRIBUTION_FAILURE_NOTIFIERS names (e-mail, Slack).
    on_failure_callback=failure_callbacks(),
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=DEADLINE_HOURS),
        callback=AsyncCallback(deadline_missed, kwargs={"hours": DEADLINE_HOURS}),
    )
    if DEADLINE_HOURS > 0
    else None,
    params={
        "start_date": date_param(
            "Start date",
            "First conversion date of a manual run (inclusive, YYYY-MM-DD). Leave empty to use the run's data interval.",
        ),
        "end_date": date_param("End date", "Last conversion date of a manual run (inclusive, YYYY-MM-DD)."),
        # The bounds are exclusive on purpose: the trigger form's number field clamps a typed value
        # to `minimum`/`maximum` (0 would become 1 without a word), while these leave the value as
        # typed and Airflow refuses the run when it is created, naming the param.
        "lookback_days": Param(
            None,
            type=["null", "integer"],
            exclusiveMinimum=0,
            exclusiveMaximum=36601,
            title="Look-back window (days)",
            description="Only sessions at most this many days before a conversion belong to its "
            "journey. Empty: unlimited. Use the same value for every run over the same data.",
        ),
        "refresh_spend": Param(
            False,
            type="boolean",
            title="Read all spend again",
            description="Read the spend of every date the report holds from the source tables again and rebuild "
            "those dates (after costs or sessions of past days changed). By default a run reads the spend of its own "
            "dates and of dates never read before.",
        ),
        "reattribute_drift": Param(
            False,
            type="boolean",
            title="Re-attribute changed days",
            description="Also re-attribute the conversions of the days whose attributed journeys no longer match "
            "the sources (the days attribution_drift and the run summary name: late, deleted, re-dated or moved "
            "sessions, changed channels, corrected conversions), as a run of those days would, and rebuild every "
            "report date they touch. Unchanged journeys of those days reuse their answers.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run: estimate the API quota only",
            description="Extract and pack the journeys, log how many requests, journeys and sessions the run would "
            "send (after reusing earlier answers), and stop: nothing is sent, the later tasks are skipped.",
        ),
        "reuse_answers": Param(
            True,
            type="boolean",
            title="Reuse earlier answers",
            description="A journey identical to one an earlier run got an answer for (same sessions, same API "
            "host and conversion type, within the staging retention) keeps that answer instead of being sent "
            "again. Turn off to ask the API again for every journey.",
        ),
    },
)
def ihc_attribution():
    def stage(name: str, publish=None, **task_args):
        """The task running ``ihc_attribution.tasks.<name>``, imported when it runs (it loads pandas);
        ``publish(outlet_events, result)`` updates the task's outlets."""

        @task(task_id=name, multiple_outputs=False, **task_args)
        def run() -> dict:
            from ihc_attribution import tasks

            context = get_current_context()
            result = getattr(tasks, name)(context)
            if publish is not None:
                publish(context["outlet_events"], result)
            return result

        return run()

    first = stage("setup_tables")
    # With $ATTRIBUTION_WAIT_FOR_DATA_MINUTES set, a run of the latest day starts by waiting (deferred
    # to the triggerer, holding no worker slot) until that day has conversions, at most that long.
    wait_minutes = settings.wait_for_data_minutes()
    if wait_minutes > 0:
        WaitForData(
            task_id="wait_for_data",
            wait_minutes=wait_minutes,
            poke_seconds=settings.wait_poke_seconds(),
            doc_md="Waits, deferred, until the run's last day has conversions (ATTRIBUTION_WAIT_FOR_DATA_MINUTES).",
        ) >> first
    (
        first
        >> stage("extract_journeys")
        >> stage("pack_requests")
        # Every run's API stage takes this many slots of the pool `ihc_api` and keeps as many requests in
        # flight; the pool's size is the budget across concurrent runs (backfills run several at once).
        # It gets a longer timeout: it waits for the service.
        >> stage("call_ihc_api", pool="ihc_api", pool_slots=settings.get("ihc_concurrency"),
                 execution_timeout=timedelta(minutes=settings.get("api_task_timeout_minutes")))
        >> stage("load_attribution")
        >> stage("build_report", publish_table, outlets=[REPORT_TABLE])
        >> stage("export_csv", publish_csv, outlets=[CHANNEL_REPORT])
        >> stage("check_run")
    )


ihc_attribution()
