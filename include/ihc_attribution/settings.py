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


def ihc_pool_slots() -> int:
    """``$ATTRIBUTION_IHC_POOL_SLOTS``: slots of the pool ``ihc_api`` each API stage takes (default 4)."""
    return env_int("ATTRIBUTION_IHC_POOL_SLOTS", 4, minimum=1)


# --- the source tables ----------------------------------------------------------------------

#: The columns the pipeline reads from each source table, by the names of the challenge schema.
SOURCE_COLUMNS = {
    "session_sources": (
        "session_id", "user_id", "event_date", "event_time", "channel_name",
        "holder_engagement", "closer_engagement", "impression_interaction",
    ),
    "conversions": ("conv_id", "user_id", "conv_date", "conv_time", "revenue"),
    "session_costs": ("session_id", "cost"),
}
#: A source's one timestamp column in place of its date and time columns: (key, date, time).
SOURCE_TIMESTAMPS = {
    "session_sources": ("event_timestamp", "event_date", "event_time"),
    "conversions": ("conv_timestamp", "conv_date", "conv_time"),
}


def source_tables() -> dict[str, dict]:
    """``$ATTRIBUTION_SOURCES``: where the source tables are and what their columns are called.

    JSON, one entry per source table to change (those left out keep the challenge's name and
    columns), e.g. ``{"conversions": {"schema": "raw", "table": "Orders", "columns": {"conv_id":
    "order_id", "conv_timestamp": "ordered_at"}}}``. ``schema`` and ``table`` are names, taken
    exactly (quoted: case and spaces kept); with a schema the table is found there whatever the
    ``search_path``; on SQLite a schema is a database of the connection, and ``sqlite_file`` a file
    attached (read-only) under that name. ``columns`` maps a column the pipeline reads to yours; ``event_timestamp`` /
    ``conv_timestamp`` name one ``TIMESTAMP`` or ``TIMESTAMPTZ`` column in place of the date and
    time columns. Returns ``{table: {"schema": str | None, "table": str, "columns": {name: yours}}}``
    for the tables given.

    :raises ValueError: for anything else, naming the variable and what is wrong.
    """
    import json

    text = _text("ATTRIBUTION_SOURCES")
    if not text:
        return {}
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"ATTRIBUTION_SOURCES is not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError("ATTRIBUTION_SOURCES must be a JSON object of source tables")
    return {name: _source_table(name, spec) for name, spec in given.items()}


def _source_table(name: str, spec: object) -> dict:
    where = f"ATTRIBUTION_SOURCES[{name!r}]"
    if name not in SOURCE_COLUMNS:
        raise ValueError(f"{where}: unknown source table; the sources are {', '.join(SOURCE_COLUMNS)}")
    if not isinstance(spec, dict) or set(spec) - {"schema", "table", "columns", "sqlite_file"}:
        raise ValueError(f"{where} must be an object with the keys schema, table, columns and sqlite_file")
    if "sqlite_file" in spec and (not isinstance(spec["sqlite_file"], str) or not spec["sqlite_file"].strip()
                                  or spec.get("schema") in (None, "main", "temp")):
        raise ValueError(f"{where}: sqlite_file needs a path, and a schema (not main or temp) to attach it as")
    schema, table, columns = spec.get("schema"), spec.get("table", name), spec.get("columns", {})
    if not all(isinstance(v, str) and v.strip() for v in (table, *([schema] if schema is not None else []))):
        raise ValueError(f"{where}: schema and table must be non-empty names")
    timestamp = SOURCE_TIMESTAMPS.get(name)
    known = SOURCE_COLUMNS[name] + ((timestamp[0],) if timestamp else ())
    if not isinstance(columns, dict) or not all(isinstance(v, str) and v.strip() for v in columns.values()):
        raise ValueError(f"{where}['columns'] must map column names to non-empty names")
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise ValueError(f"{where}['columns']: unknown {', '.join(unknown)}; the columns are {', '.join(known)}")
    if timestamp and timestamp[0] in columns and set(timestamp[1:]) & set(columns):
        raise ValueError(f"{where}['columns']: {timestamp[0]} replaces {timestamp[1]} and {timestamp[2]}; give one or the other")
    odd = [n for n in (schema or "", table, *columns.values()) if set(n) & set("?%\0")]
    if odd:  # "?" and "%" are the drivers' placeholders, even inside a quoted name
        raise ValueError(f"{where}: the name {odd[0]!r} holds ?, % or NUL, which the package cannot quote")
    found = {"schema": schema, "table": table, "columns": dict(columns)}
    return {**found, "sqlite_file": spec["sqlite_file"]} if "sqlite_file" in spec else found


def sqlite_source_files() -> dict[str, str]:
    """The SQLite files of ``$ATTRIBUTION_SOURCES`` (``sqlite_file``), by the schema each is attached as."""
    files: dict[str, str] = {}
    for name, spec in source_tables().items():
        if "sqlite_file" in spec:
            if files.setdefault(spec["schema"], spec["sqlite_file"]) != spec["sqlite_file"]:
                raise ValueError(f"ATTRIBUTION_SOURCES[{name!r}]: schema {spec['schema']} is given two sqlite_files")
    return files
