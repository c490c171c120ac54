"""Every deployment setting of the package, in one place, read from the environment.

Connections (``attribution_db``, ``ihc_api``) hold endpoints and secrets; params hold what a
person chooses per run; these hold where things go and how the DAG behaves. Each is read when
asked for, so a test or a worker's environment changes it without a reload. The README's
"Environment variables" table lists the same names.
"""

from __future__ import annotations

import os
from pathlib import Path

DAG_ID = "ihc_attribution"

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _text(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def env_flag(name: str, default: bool) -> bool:
    """The on/off setting ``$name``: 1/true/yes/on or 0/false/no/off, ``default`` when unset or empty.

    :raises ValueError: for any other value, naming the variable.
    """
    value = _text(name).lower()
    if not value:
        return default
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{name}={value!r} must be 1/true/yes or 0/false/no")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """The whole-number setting ``$name``, ``default`` when unset or empty.

    :raises ValueError: for anything but a whole number of at least ``minimum``, naming the variable.
    """
    value = _text(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name}={value!r} must be a whole number of at least {minimum}")
    return number


def env_float(name: str, default: float) -> float:
    """The number setting ``$name``, ``default`` when unset or empty."""
    value = _text(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} must be a number") from None


# --- connections ----------------------------------------------------------------------------


def db_conn_id() -> str:
    """``$ATTRIBUTION_DB_CONN_ID``: the attribution database's connection (default ``attribution_db``)."""
    return _text("ATTRIBUTION_DB_CONN_ID", "attribution_db")


def ihc_conn_id() -> str:
    """``$IHC_CONN_ID``: the IHC API's connection (default ``ihc_api``)."""
    return _text("IHC_CONN_ID", "ihc_api")


def alert_conn_id() -> str:
    """``$ATTRIBUTION_ALERT_CONN_ID``: the webhook alerts are posted to (default ``attribution_alerts``)."""
    return _text("ATTRIBUTION_ALERT_CONN_ID", "attribution_alerts")


def failure_notifiers() -> list[str]:
    """``$ATTRIBUTION_FAILURE_NOTIFIERS``: import paths (``package.module:factory``, comma-separated) of
    functions that return a notifier for each failed run ("": none). See :mod:`ihc_attribution.notify`."""
    return [path.strip() for path in _text("ATTRIBUTION_FAILURE_NOTIFIERS").split(",") if path.strip()]


# --- outputs --------------------------------------------------------------------------------


def output_location() -> str:
    """Where CSVs and charts go: ``$ATTRIBUTION_OUTPUT_BASE_URL``, else ``$ATTRIBUTION_OUTPUT_DIR``, else ``output``.

    A URL (``file://``, ``s3://`` ...) or a local folder (taken from the working directory).
    """
    return _text("ATTRIBUTION_OUTPUT_BASE_URL") or _text("ATTRIBUTION_OUTPUT_DIR", "output")


def local_output_dir() -> Path | None:
    """The output location as a local folder (what the report pages list), or None for an object store."""
    location = output_location()
    if location.startswith("file://"):
        location = location.removeprefix("file://")
    elif "://" in location:
        return None
    return Path(location).expanduser().resolve()


def output_conn_id() -> str | None:
    """``$ATTRIBUTION_OUTPUT_CONN_ID``: the object store's connection, if any."""
    return _text("ATTRIBUTION_OUTPUT_CONN_ID") or None


def csv_escape_formulas() -> bool:
    """``$ATTRIBUTION_CSV_ESCAPE_FORMULAS``: prefix cells a spreadsheet would run with ``'`` (default off)."""
    return env_flag("ATTRIBUTION_CSV_ESCAPE_FORMULAS", False)


def csv_model_columns() -> bool:
    """``$ATTRIBUTION_CSV_MODEL_COLUMNS``: add each rule-based model's orders and revenue to the CSV (default off)."""
    return env_flag("ATTRIBUTION_CSV_MODEL_COLUMNS", False)


def currency_code() -> str:
    """``$ATTRIBUTION_CURRENCY``: the code amounts are labelled with (default ``EUR``)."""
    return _text("ATTRIBUTION_CURRENCY", "EUR").upper()


def ui_base_url_override() -> str:
    """``$ATTRIBUTION_UI_BASE_URL``: the Airflow UI's base URL for links ("" = Airflow's own setting)."""
    return _text("ATTRIBUTION_UI_BASE_URL")


# --- the DAG and its tasks ------------------------------------------------------------------


def schedule_cron() -> str:
    """``$ATTRIBUTION_SCHEDULE_CRON``: when the daily run starts, UTC (default ``0 0 * * *``).

    Whatever the time, a scheduled run handles the calendar day (UTC) before it starts.
    """
    return _text("ATTRIBUTION_SCHEDULE_CRON", "0 0 * * *")


def source_asset_uri() -> str:
    """``$ATTRIBUTION_SOURCE_ASSET``: an asset URI your loader updates; its update also starts a run ("": none)."""
    return _text("ATTRIBUTION_SOURCE_ASSET")


def wait_for_data_minutes() -> float:
    """``$ATTRIBUTION_WAIT_FOR_DATA_MINUTES``: how long a run of the latest day waits for its conversions (0: off).

    Above 0 the DAG starts with the task ``wait_for_data`` (see :mod:`ihc_attribution.readiness`);
    off (the default), the DAG has no such task.
    """
    minutes = env_float("ATTRIBUTION_WAIT_FOR_DATA_MINUTES", 0)
    if minutes < 0:
        raise ValueError(f"ATTRIBUTION_WAIT_FOR_DATA_MINUTES={minutes:g} must be 0 (off) or more")
    return minutes


def wait_poke_seconds() -> float:
    """``$ATTRIBUTION_WAIT_POKE_SECONDS``: how often the wait counts the day's conversions again (default 60)."""
    seconds = env_float("ATTRIBUTION_WAIT_POKE_SECONDS", 60)
    if seconds <= 0:
        raise ValueError(f"ATTRIBUTION_WAIT_POKE_SECONDS={seconds:g} must be above 0")
    return seconds


def late_data_days() -> int:
    """``$ATTRIBUTION_LATE_DATA_DAYS``: days before its interval a scheduled run covers again (default 3).

    Conversions and sessions loaded late, and costs restated for those days, are taken in by the
    next scheduled runs; journeys that did not change reuse their answers (no API quota).
    """
    return env_int("ATTRIBUTION_LATE_DATA_DAYS", 3)


def staging_retention_days() -> int:
    """``$ATTRIBUTION_STAGING_RETENTION_DAYS``: days a run's staging is kept (default 30)."""
    return env_int("ATTRIBUTION_STAGING_RETENTION_DAYS", 30)


def task_retries() -> int:
    """``$ATTRIBUTION_TASK_RETRIES``: Airflow retries per task (default 2)."""
    return env_int("ATTRIBUTION_TASK_RETRIES", 2)


def start_date_text() -> str:
    """``$ATTRIBUTION_START_DATE``: the DAG's start date, ``YYYY-MM-DD`` (default 2000-01-01)."""
    return _text("ATTRIBUTION_START_DATE", "2000-01-01")


def task_timeout_minutes() -> float:
    """``$ATTRIBUTION_TASK_TIMEOUT_MINUTES``: a task attempt's upper bound (default 30)."""
    return env_float("ATTRIBUTION_TASK_TIMEOUT_MINUTES", 30)


def api_task_timeout_minutes() -> float:
    """``$ATTRIBUTION_API_TASK_TIMEOUT_MINUTES``: the API stage's upper bound (default 120)."""
    return env_float("ATTRIBUTION_API_TASK_TIMEOUT_MINUTES", 120)


def deadline_hours() -> float:
    """``$ATTRIBUTION_DEADLINE_HOURS``: alert when a run is unfinished this long after queued (0: none)."""
    return env_float("ATTRIBUTION_DEADLINE_HOURS", 0)


def max_active_runs() -> int:
    """``$ATTRIBUTION_MAX_ACTIVE_RUNS``: runs of the DAG at once (default 4); the UI's Backfill dialog allows up to it.

    Runs at once are safe: staging is keyed by run, writers take the database's write lock one at
    a time, and the pool ``ihc_api`` bounds the API requests in flight across runs.
    """
    return env_int("ATTRIBUTION_MAX_ACTIVE_RUNS", 4, minimum=1)


def ihc_pool_slots() -> int:
    """``$ATTRIBUTION_IHC_POOL_SLOTS``: slots of the pool ``ihc_api`` each API stage takes (default 4)."""
    return env_int("ATTRIBUTION_IHC_POOL_SLOTS", 4, minimum=1)
