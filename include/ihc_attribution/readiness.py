"""Start when the data is there: the optional first task ``wait_for_data`` and its trigger.

With ``$ATTRIBUTION_WAIT_FOR_DATA_MINUTES`` above 0, :class:`WaitForData` counts the conversions
of the run's last day. When there are none and the run is one of the latest day, it defers to
:class:`ConversionsPresentTrigger` (no worker slot held) until there are some or the time is up,
then fails in one line without a retry. Backfills and runs with a range check once and go on.
Nothing here imports the stage code (pandas) until a task runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from ihc_attribution.errors import PermanentError

log = logging.getLogger(__name__)

#: How long after the wait's end Airflow's own deferral timeout fails the task, should the
#: trigger not have answered by then (a triggerer that was down).
DEFERRAL_GRACE = dt.timedelta(minutes=10)


class DataNotReadyError(PermanentError):
    """The run's last day had no conversions when the wait ended."""


def count_conversions(day: str, conn_id: str | None = None, *, check_sources: bool = False) -> int:
    """The conversions of ``day`` (``YYYY-MM-DD``), through the ``attribution_db`` connection; with
    ``check_sources``, first fail in one line when the sources cannot be read, as ``setup_tables`` does."""
    from ihc_attribution import schema, sources
    from ihc_attribution.tasks import open_db

    with open_db(conn_id) as db:
        if check_sources:
            schema.check_sources(db)
        day_param = sources.as_type_of(db, "?", sources.CONVERSIONS, "conv_date")
        count = f"SELECT COUNT(*) FROM {sources.relation(db, sources.CONVERSIONS)} WHERE conv_date = {day_param}"
        return int(db.scalar(count, (day,)) or 0)


def waits_for_data(context: Mapping[str, Any]) -> bool:
    """Whether the run handles the latest day, whose data may still be loading: not a backfill, no range params."""
    from ihc_attribution.daterange import range_from_params

    run_type = str(getattr(context.get("dag_run"), "run_type", "")).lower()
    return "backfill" not in run_type and range_from_params(context.get("params") or {}) is None


class ConversionsPresentTrigger(BaseTrigger):
    """Fires once ``day`` has conversions, or at ``deadline`` (ISO, UTC) if it still has none.

    Counts in a thread (the database drivers block) so that the triggerer's loop keeps serving
    others; a failed count (the database restarting) is tried again, its error sent with a timeout.
    """

    def __init__(self, day: str, deadline: str, poke_seconds: float, conn_id: str | None = None):
        super().__init__()
        self.day = day
        self.deadline = deadline
        self.poke_seconds = poke_seconds
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"day": self.day, "deadline": self.deadline, "poke_seconds": self.poke_seconds, "conn_id": self.conn_id},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = dt.datetime.fromisoformat(self.deadline)
        started = time.monotonic()
        checks, error = 0, None
        while True:
            checks += 1
            try:
                found = await asyncio.to_thread(count_conversions, self.day, self.conn_id)
                error = None
            except Exception as exc:  # noqa: BLE001 - any failure to count is "not yet", until the deadline
                found, error = 0, f"{type(exc).__name__}: {' '.join(str(exc).splitlines())}"
                self.log.warning("could not count the conversions of %s (%s); trying again", self.day, error)
            waited = round(time.monotonic() - started, 1)
            if found:
                yield TriggerEvent({"status": "ready", "day": self.day, "conversions": found, "checks": checks,
                                    "waited_seconds": waited})
                return
            remaining = (deadline - dt.datetime.now(dt.timezone.utc)).total_seconds()
            if remaining <= 0:
                yield TriggerEvent({"status": "timeout", "day": self.day, "checks": checks, "waited_seconds": waited,
                                    "error": error})
                return
            await asyncio.sleep(min(self.poke_seconds, remaining))


class WaitForData(BaseOperator):
    """The run's first task when ``$ATTRIBUTION_WAIT_FOR_DATA_MINUTES`` is set; a bad range fails here, in one line."""

    ui_color = "#e8f0fe"

    def __init__(self, *, wait_minutes: float, poke_seconds: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.wait_minutes = wait_minutes
        self.poke_seconds = poke_seconds

    def execute(self, context: Any) -> dict:
        from ihc_attribution import settings, tasks

        try:
            day = tasks.run_range(context).last_date.isoformat()
            found = count_conversions(day, check_sources=True)
        except PermanentError as exc:
            tasks.fail_permanently(exc)
        if found:
            log.info("the run's last day %s has %d conversions: the run goes on", day, found)
            return {"day": day, "conversions": found, "waited_seconds": 0}
        if not waits_for_data(context):
            log.warning("the run's last day %s has no conversions; a backfill or a run with start_date/end_date "
                        "does not wait for them: the run goes on", day)
            return {"day": day, "conversions": 0, "waited_seconds": 0}
        wait = dt.timedelta(minutes=self.wait_minutes)
        deadline = dt.datetime.now(dt.timezone.utc) + wait
        log.info(
            "no conversions of %s yet: waiting for them until %s UTC (ATTRIBUTION_WAIT_FOR_DATA_MINUTES=%g), "
            "counting every %g s in the triggerer; no worker slot is held meanwhile",
            day, deadline.strftime("%Y-%m-%d %H:%M:%S"), self.wait_minutes, self.poke_seconds,
        )
        self.defer(
            trigger=ConversionsPresentTrigger(day, deadline.isoformat(), self.poke_seconds, settings.get("db_conn_id")),
            method_name="execute_complete",
            timeout=wait + DEFERRAL_GRACE,
        )

    def execute_complete(self, context: Any, event: dict) -> dict:
        from ihc_attribution import tasks

        if event.get("status") == "ready":
            log.info("%d conversions of %s are there after %.0f s of waiting: the run goes on",
                     event["conversions"], event["day"], event["waited_seconds"])
            return {key: event[key] for key in ("day", "conversions", "waited_seconds")}
        error = f"; the last count failed: {event['error']}" if event.get("error") else ""
        tasks.fail_permanently(DataNotReadyError(
            f"no conversions of {event['day']} after waiting {self.wait_minutes:g} minutes "
            f"(ATTRIBUTION_WAIT_FOR_DATA_MINUTES){error}: load the day's data, then clear this task"
        ))
