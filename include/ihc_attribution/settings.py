"""Every deployment setting of the package, in one place: the ``[attribution]`` configuration section.

Connections (``attribution_db``, ``ihc_api``) hold endpoints and secrets; params hold what a
person chooses per run; these hold where things go and how the DAG behaves. :data:`OPTIONS`
lists them; the provider declares them as Airflow's configuration section ``attribution``, so
``airflow config list --section attribution`` shows each with its default. A setting is read
from ``$ATTRIBUTION_<NAME>``, else from Airflow's configuration (``[attribution] <name>`` in
``airflow.cfg`` or ``$AIRFLOW__ATTRIBUTION__<NAME>``), else its default. Each is read when asked
for, so a test or a worker's environment changes it without a reload.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DAG_ID = "ihc_attribution"
SECTION = "attribution"

#: Every setting: name -> (type, default, description). ``ATTRIBUTION_<NAME>`` in the environment.
OPTIONS: dict[str, tuple[str, str, str]] = {
    "db_conn_id": ("string", "attribution_db", "The attribution database's connection."),
    "ihc_conn_id": ("string", "ihc_api", "The IHC API's connection."),
    "alert_conn_id": ("string", "attribution_alerts", "The webhook connection alerts are posted to."),
    "failure_notifiers": ("string", "", "Import paths (module:function, comma-separated) of functions returning a "
                                        "notifier (SmtpNotifier, SlackNotifier ...) each failed run sends."),
    "output_base_url": ("string", "", "Where CSVs and charts go, through ObjectStoragePath (a folder or URL); "
                                      "empty: output_dir."),
    "output_dir": ("string", "output", "The local output folder, used when output_base_url is empty."),
    "output_conn_id": ("string", "", "The object store's connection, if any."),
    "csv_escape_formulas": ("boolean", "false", "Prefix CSV cells a spreadsheet would run with '."),
    "csv_model_columns": ("boolean", "false", "Add each rule-based model's orders and revenue to the CSV."),
    "currency": ("string", "EUR", "The ISO 4217 code amounts are labelled with."),
    "ui_base_url": ("string", "", "The Airflow UI's base URL for report links; empty: Airflow's [api] base_url."),
    "schedule_cron": ("string", "0 0 * * *", "When the daily run starts (cron, UTC); it handles the day before."),
    "source_asset": ("string", "", "URI of an asset your loader updates; its update also starts a run."),
    "wait_for_data_minutes": ("float", "0", "How long a run of the latest day waits, deferred, for that day's "
                                            "conversions (0: no wait)."),
    "wait_poke_seconds": ("float", "60", "How often that wait counts the day's conversions again."),
    "late_data_days": ("integer", "3", "Days before its interval a scheduled run covers again."),
    "staging_retention_days": ("integer", "30", "Days a run's staging rows are kept."),
    "task_retries": ("integer", "2", "Airflow retries per task."),
    "start_date": ("string", "2000-01-01", "The DAG's start_date (YYYY-MM-DD)."),
    "task_timeout_minutes": ("float", "30", "A task attempt's upper bound."),
    "api_task_timeout_minutes": ("float", "120", "The API stage's upper bound."),
    "deadline_hours": ("float", "0", "Alert when a run is unfinished this long after it was queued (0: never)."),
    "sources": ("string", "", "Where the source tables are and what their columns are called (JSON); "
                              "empty: the challenge's tables through the search path."),
    "max_active_runs": ("integer", "4", "Runs of the DAG at once; the UI's Backfill dialog allows Max Active Runs up "
                                        "to it (staging is keyed by run, the pool ihc_api bounds the API requests)."),
    "ihc_concurrency": ("integer", "4", "IHC requests in flight: the slots of the pool ihc_api each run's API "
                                        "stage takes, and the requests it sends at once."),
}

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")
#: The least value of an integer setting (0 when not listed).
_MINIMUM = {"ihc_concurrency": 1, "max_active_runs": 1}


def env_name(name: str) -> str:
    return "ATTRIBUTION_" + name.upper()


def _text(name: str) -> str:
    """The setting ``name`` as text: the environment, else Airflow's configuration, else the default."""
    value = os.environ.get(env_name(name), "").strip()
    if not value:
        from airflow.configuration import conf

        value = (conf.get(SECTION, name, fallback="") or "").strip()
    return value or OPTIONS[name][1]


def get(name: str) -> str | bool | int | float:
    """The setting ``name`` parsed as its type in :data:`OPTIONS` (ValueError names a bad one's variable)."""
    kind, value = OPTIONS[name][0], _text(name)
    if kind == "boolean":
        if value.lower() in _ON + _OFF:
            return value.lower() in _ON
        raise ValueError(f"{env_name(name)}={value.lower()!r} must be 1/true/yes or 0/false/no")
    if kind == "integer":
        minimum = _MINIMUM.get(name, 0)
        with contextlib.suppress(ValueError):
            if int(value) >= minimum:
                return int(value)
        raise ValueError(f"{env_name(name)}={value!r} must be a whole number of at least {minimum}")
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{env_name(name)}={value!r} must be a number") from None
    return value


def provider_config() -> dict:
    """The section ``attribution`` in the form of a provider's ``config`` (``airflow config list``)."""
    options = {
        name: {"description": description, "version_added": "0.4.0", "type": kind, "example": None,
               "default": default}
        for name, (kind, default, description) in OPTIONS.items()
    }
    return {SECTION: {"description": "Settings of the IHC attribution DAG, its report and its exports. "
                                     "Each can also be set as the environment variable ATTRIBUTION_<NAME>.",
                      "options": options}}


# --- the settings read elsewhere than through get() ------------------------------------------


def output_location() -> str:
    """Where CSVs and charts go: a URL (``file://``, ``s3://`` ...) or a local folder (from the working directory)."""
    return _text("output_base_url") or _text("output_dir")


def local_output_dir() -> Path | None:
    """The output location as a local folder (what the report pages list), or None for an object store."""
    location = output_location().removeprefix("file://")
    return None if "://" in location else Path(location).expanduser().resolve()


def wait_for_data_minutes() -> float:
    """Above 0 the DAG starts with the task ``wait_for_data`` (see :mod:`ihc_attribution.readiness`)."""
    minutes = get("wait_for_data_minutes")
    if minutes < 0:
        raise ValueError(f"ATTRIBUTION_WAIT_FOR_DATA_MINUTES={minutes:g} must be 0 (off) or more")
    return minutes


def wait_poke_seconds() -> float:
    seconds = get("wait_poke_seconds")
    if seconds <= 0:
        raise ValueError(f"ATTRIBUTION_WAIT_POKE_SECONDS={seconds:g} must be above 0")
    return seconds


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
    """``$ATTRIBUTION_SOURCES`` (docs/configuration.md): where the source tables are and what their columns are called.

    JSON, one entry per source table to change, e.g. ``{"conversions": {"schema": "raw", "table":
    "Orders", "columns": {"conv_id": "order_id", "conv_timestamp": "ordered_at"}}}`` (and on SQLite
    ``sqlite_file``, attached read-only as the schema). Returns ``{table: {"schema": str | None,
    "table": str, "columns": {name: yours}}}`` for the tables given.

    :raises ValueError: for anything else, naming the variable and what is wrong.
    """
    import json

    text = _text("sources")
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
