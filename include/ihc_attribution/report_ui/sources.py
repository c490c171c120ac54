"""What the report pages read, per request and never at import: the attribution database and the exported files.

The database is the one of the ``attribution_db`` connection (``$ATTRIBUTION_DB_CONN_ID``), looked
up through Airflow: a SQLite file opened read-only, any other database through the connection's
hook in a read-only session. A missing connection, database or table is a message on the page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ihc_attribution import settings

if TYPE_CHECKING:
    from ihc_attribution.export import ReportRow

REPORT_FILE_RE = re.compile(r"channel_reporting_(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})\.(csv|html)")
SQLITE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Report:
    """The exported files of one range: the CSV, the chart, or both."""

    start: str
    end: str
    csv: Path | None
    chart: Path | None
    modified: dt.datetime

    @property
    def days(self) -> int:
        return (dt.date.fromisoformat(self.end) - dt.date.fromisoformat(self.start)).days + 1


def list_reports(folder: Path | None) -> list[Report]:
    """Reports found in ``folder``, by range: latest end date first, then the longer range."""
    found: dict[tuple[str, str], dict[str, Path]] = {}
    modified: dict[tuple[str, str], float] = {}
    try:
        paths = list(folder.iterdir()) if folder else []
    except OSError:
        paths = []
    for path in paths:
        match = REPORT_FILE_RE.fullmatch(path.name)
        with contextlib.suppress(OSError):  # a file gone while listed
            if match and path.is_file():
                mtime, key = path.stat().st_mtime, (match.group(1), match.group(2))
                found.setdefault(key, {})[match.group(3)] = path
                modified[key] = max(modified.get(key, 0.0), mtime)
    reports = [Report(start, end, files.get("csv"), files.get("html"),
                      dt.datetime.fromtimestamp(modified[(start, end)], dt.timezone.utc))
               for (start, end), files in found.items()]
    return sorted(reports, key=lambda r: (r.end, -r.days, r.start), reverse=True)


def report_file(folder: Path | None, name: str) -> Path | None:
    """The report file ``name`` in ``folder``, or ``None``: only exported report names, no other path."""
    if folder is None or not REPORT_FILE_RE.fullmatch(name):
        return None
    path = folder / name
    return path if path.is_file() else None


# --- database ----------------------------------------------------------------------------------

REPORT_TABLE = "channel_reporting"
ISSUES_TABLE = "attribution_issues"
BUILDS_TABLE = "attribution_report_builds"
RUNS_TABLE = "attribution_runs"


class DatabaseUnavailable(Exception):
    """The attribution database cannot be opened; the message says why."""


class ReportDb:
    """A read-only DB-API connection (``sqlite3`` or a PostgreSQL driver's) with portable ``?`` placeholders;
    ``source`` says on the page where the data comes from."""

    def __init__(self, conn: Any, source: str) -> None:
        self.conn = conn
        self.source = source
        self.is_sqlite = isinstance(conn, sqlite3.Connection)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one query; ``?`` placeholders are converted for drivers that use ``%s``."""
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.execute(sql if self.is_sqlite else sql.replace("?", "%s"), tuple(params))
            return cur.fetchall()

    def has_table(self, table: str) -> bool:
        if self.is_sqlite:
            sql = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT COUNT(*) FROM (SELECT to_regclass(?) AS t) AS r WHERE t IS NOT NULL"  # search_path
        return bool(self.query(sql, (table,))[0][0])

    def close(self) -> None:
        self.conn.close()


def open_db(conn_id: str | None = None) -> ReportDb:
    """The attribution database of the connection, read-only; ``DatabaseUnavailable`` when the connection
    is not defined, the SQLite file does not exist or the database cannot be reached."""
    conn_id = conn_id or settings.get("db_conn_id")
    try:
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(conn_id)
    except Exception as exc:  # not defined, or malformed
        raise DatabaseUnavailable(f"connection {conn_id!r} is not defined or cannot be read "
                                  f"({type(exc).__name__})") from exc
    if connection.conn_type == "sqlite":
        # The JSON form gives the path as host; the URI form (sqlite:////abs/path.db) as schema. POSIX
        # keeps a leading "//", which a file: URI would read as a host.
        path = Path(re.sub("^//+", "/", connection.host or connection.schema or "")).expanduser().resolve()
        if not path.is_file():
            raise DatabaseUnavailable(f"database file {path} does not exist")
        uri = "file:" + path.as_posix().replace("?", "%3f").replace("#", "%23") + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT_SECONDS)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
        with contextlib.suppress(Exception):  # without the sources' files, issues show no conversion date
            from ihc_attribution.db import attach_source_files

            attach_source_files(conn)
        return ReportDb(conn, str(path))
    try:
        conn = connection.get_hook().get_conn()
        # psycopg 2 and 3 alike: no transaction is left open between page queries, and the
        # session refuses every write (the pages only read).
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.execute("SET DateStyle TO ISO, YMD")  # dates read as text are YYYY-MM-DD, as the runs read them
        cur.close()
    except Exception as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return ReportDb(conn, f"{connection.conn_type} connection {conn_id!r}")


@dataclass(frozen=True)
class Selection:
    """What the analyst picked: an inclusive date range and channels (empty: all channels)."""

    start: str
    end: str
    channels: tuple[str, ...] = ()


def report_channels(db: ReportDb) -> list[str]:
    """Every channel of ``channel_reporting``, by name."""
    return [str(r[0]) for r in db.query(f"SELECT DISTINCT channel_name FROM {REPORT_TABLE} ORDER BY channel_name")]


def report_bounds(db: ReportDb) -> tuple[str, str] | None:
    """First and last date of ``channel_reporting``; ``None`` when it is empty."""
    low, high = db.query(f"SELECT MIN(date), MAX(date) FROM {REPORT_TABLE}")[0]
    return None if low is None else (str(low), str(high))


def report_rows(db: ReportDb, selection: Selection) -> list[ReportRow]:
    """The ``channel_reporting`` rows of the selection rounded as the CSV holds them: those
    :func:`ihc_attribution.export.read_report` gives the export and the run's check, so every total is theirs."""
    from ihc_attribution.export import report_row

    where = f" AND channel_name IN ({', '.join('?' * len(selection.channels))})" if selection.channels else ""
    rows = db.query(
        f"SELECT channel_name, date, cost, ihc, ihc_revenue FROM {REPORT_TABLE} "
        f"WHERE date >= ? AND date <= ?{where} ORDER BY date, channel_name",
        (selection.start, selection.end, *selection.channels),
    )
    return [report_row(str(c), str(d), cost, ihc, rev) for c, d, cost, ihc, rev in rows]


@dataclass(frozen=True)
class Build:
    """Consecutive report dates last rebuilt by one run, with that run's settings.

    ``started_at`` is when the run's first stage ran (``attribution_runs.created_at``), ``None``
    once the run's staging has been purged. The builds table's ``triggered_at`` is not used: it
    holds the run's *run after* time, which for a backfill or a catch-up run is the end of its
    data interval, not when it was triggered.
    """

    first_date: str
    last_date: str
    run_id: str
    lookback_days: int | None
    started_at: str | None
    built_at: str
    run_start: str | None = None
    run_end: str | None = None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def report_builds(db: ReportDb, selection: Selection) -> list[Build] | None:
    """The runs that built the selection's report dates, as runs of consecutive dates; ``None`` without the table."""
    if not db.has_table(BUILDS_TABLE):
        return None
    runs_join = (f" LEFT JOIN {RUNS_TABLE} r ON r.run_id = b.run_id" if db.has_table(RUNS_TABLE) else "")
    run_cols = "r.range_start, r.range_end, r.created_at" if runs_join else "NULL, NULL, NULL"
    rows = db.query(
        f"SELECT b.report_date, b.run_id, b.lookback_days, b.built_at, {run_cols} "
        f"FROM {BUILDS_TABLE} b{runs_join} WHERE b.report_date >= ? AND b.report_date <= ? ORDER BY b.report_date",
        (selection.start, selection.end),
    )
    builds: list[Build] = []
    for date, run_id, lookback, built, run_start, run_end, started in rows:
        date, last = str(date), builds[-1] if builds else None
        if (last is not None and (last.run_id, last.built_at) == (run_id, str(built))
                and dt.date.fromisoformat(date) - dt.date.fromisoformat(last.last_date) == dt.timedelta(days=1)):
            builds[-1] = dataclasses.replace(last, last_date=date)
            continue
        builds.append(Build(date, date, str(run_id), None if lookback is None else int(lookback), _text(started),
                            str(built), _text(run_start), _text(run_end)))
    return builds


@dataclass(frozen=True)
class Issue:
    """One row of ``attribution_issues``, with its conversion's date where it can be found."""

    conv_id: str
    reason: str
    detail: str
    run_id: str
    recorded_at: str
    conv_date: str | None = None


@dataclass
class IssuesView:
    """Open issues, or why they cannot be shown (``error``)."""

    source: str = ""
    total: int = 0
    by_reason: list[tuple[str, int]] = field(default_factory=list)
    by_date: list[tuple[str, str, int]] = field(default_factory=list)
    latest: list[Issue] = field(default_factory=list)
    error: str | None = None
    table_missing: bool = False
    #: (conversion day, conversions) whose attributed journeys no longer match the sources: to re-run.
    changed_days: list[tuple[str, int]] = field(default_factory=list)

    def counts(self) -> tuple[list[str], list[tuple[str, dict[str, int]]]]:
        """The reason x date table: reasons (columns) and one row per date (newest first)."""
        reasons = [reason for reason, _ in self.by_reason]
        table: dict[str, dict[str, int]] = {}
        for date, reason, count in self.by_date:
            table.setdefault(date, {})[reason] = count
        return reasons, sorted(table.items(), reverse=True)


def _conversion_date(db: ReportDb) -> tuple[str, str]:
    """The issue's conversion date (text) and the join that gives it, through the sources' settings."""
    from ihc_attribution import sources

    try:
        if not sources.exists(db, sources.CONVERSIONS):
            return "NULL", ""
        conv_id = sources.text_id(db, "c.conv_id", sources.CONVERSIONS, "conv_id")
        return "CAST(c.conv_date AS TEXT)", f" LEFT JOIN {sources.table(db, sources.CONVERSIONS)} c ON {conv_id} = i.conv_id"
    except sources.SourceTableError:  # ATTRIBUTION_SOURCES is malformed: the runs say so
        return "NULL", ""


def read_issues(db: ReportDb, limit: int = 200, reason: str | None = None) -> IssuesView:
    """Open issues: counts by reason, by conversion date and reason, and the latest ``limit``."""
    if not db.has_table(ISSUES_TABLE):
        return IssuesView(source=db.source, table_missing=True)
    view = IssuesView(source=db.source)
    date_expr, join = _conversion_date(db)
    where, params = (" WHERE i.reason = ?", (reason,)) if reason else ("", ())
    view.total = int(db.query(f"SELECT COUNT(*) FROM {ISSUES_TABLE} i{where}", params)[0][0])
    view.by_reason = [(str(r), int(n)) for r, n in db.query(
        f"SELECT reason, COUNT(*) FROM {ISSUES_TABLE} GROUP BY reason ORDER BY COUNT(*) DESC, reason")]
    view.by_date = [("unknown" if d is None else str(d), str(r), int(n)) for d, r, n in db.query(
        f"SELECT {date_expr}, i.reason, COUNT(*) FROM {ISSUES_TABLE} i{join}{where} "
        f"GROUP BY {date_expr}, i.reason ORDER BY 1, 2", params)]
    if db.has_table("attribution_drift"):
        view.changed_days = [(str(d), int(n)) for d, n in db.query(
            "SELECT conv_date, COUNT(*) FROM attribution_drift WHERE conv_date IS NOT NULL GROUP BY conv_date ORDER BY 1")]
    view.latest = [
        Issue(str(c), str(r), "" if d is None else str(d), str(run), str(at), _text(day))
        for c, r, d, run, at, day in db.query(
            f"SELECT i.conv_id, i.reason, i.detail, i.run_id, i.recorded_at, {date_expr} "
            f"FROM {ISSUES_TABLE} i{join}{where} ORDER BY i.recorded_at DESC, i.conv_id, i.reason LIMIT ?",
            (*params, limit),
        )
    ]
    return view
