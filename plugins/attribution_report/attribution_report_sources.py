"""What the report page shows: exported reports on disk and open issues in the database.

Everything here runs per request, never at import: the output folder and the database are
looked up when the page is asked for, so a missing folder, database or table shows as a message
on the page instead of breaking the API server. SQLite databases are opened read-only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DB_CONN_ID_ENV = "ATTRIBUTION_DB_CONN_ID"
DEFAULT_DB_CONN_ID = "attribution_db"
OUTPUT_DIR_ENV = "ATTRIBUTION_OUTPUT_DIR"
ISSUES_TABLE = "attribution_issues"
REPORT_FILE_RE = re.compile(r"channel_reporting_(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})\.(csv|html)")
SQLITE_TIMEOUT_SECONDS = 5.0


def output_dir() -> Path:
    """``$ATTRIBUTION_OUTPUT_DIR`` (default ``output``); a relative path is taken from the project root."""
    path = Path(os.environ.get(OUTPUT_DIR_ENV) or "output").expanduser()
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


@dataclass(frozen=True)
class Report:
    """The exported files of one range: the CSV, the chart, or both."""

    start: str
    end: str
    files: dict[str, Path]
    modified: dt.datetime

    @property
    def days(self) -> int:
        """Number of calendar days the range covers."""
        return (dt.date.fromisoformat(self.end) - dt.date.fromisoformat(self.start)).days + 1

    @property
    def csv(self) -> Path | None:
        return self.files.get("csv")

    @property
    def chart(self) -> Path | None:
        return self.files.get("html")


def list_reports(folder: Path) -> list[Report]:
    """Reports found in ``folder``, most recently written first; empty if the folder is missing."""
    found: dict[tuple[str, str], dict[str, Path]] = {}
    modified: dict[tuple[str, str], float] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = REPORT_FILE_RE.fullmatch(entry.name)
        if not match:
            continue
        try:
            if not entry.is_file():
                continue
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        key = (match.group(1), match.group(2))
        found.setdefault(key, {})[match.group(3)] = Path(entry.path)
        modified[key] = max(modified.get(key, 0.0), mtime)
    reports = [
        Report(start, end, files, dt.datetime.fromtimestamp(modified[(start, end)], dt.timezone.utc))
        for (start, end), files in found.items()
    ]
    return sorted(reports, key=lambda r: (r.modified, r.start, r.end), reverse=True)


def report_file(folder: Path, name: str) -> Path | None:
    """The report file ``name`` in ``folder``, or ``None``: only exported report names, no other path."""
    if not REPORT_FILE_RE.fullmatch(name):
        return None
    path = folder / name
    return path if path.is_file() else None


# --- issues ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """One row of ``attribution_issues``."""

    conv_id: str
    reason: str
    detail: str
    run_id: str
    recorded_at: str


@dataclass
class IssuesView:
    """Open issues, or why they cannot be shown (``error``)."""

    source: str = ""
    total: int = 0
    by_reason: list[tuple[str, int]] = field(default_factory=list)
    latest: list[Issue] = field(default_factory=list)
    error: str | None = None
    table_missing: bool = False


@dataclass(frozen=True)
class DbLocation:
    """Where the attribution database is: a SQLite file, or another Airflow connection."""

    conn_id: str
    conn_type: str
    sqlite_path: Path | None = None
    description: str = ""


def _from_env(conn_id: str) -> DbLocation | None:
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    raw = raw.strip()
    if raw.startswith("{"):
        spec = json.loads(raw)
        conn_type = str(spec.get("conn_type") or "")
        host = spec.get("host") or ""
    else:
        parts = urlsplit(raw)
        conn_type = parts.scheme.replace("-", "_")
        # sqlite:////abs/path.db or sqlite:///relative/path.db, as SQLAlchemy reads them.
        host = unquote(parts.netloc + parts.path)[1:] if conn_type == "sqlite" else parts.hostname or ""
    if conn_type == "sqlite":
        return DbLocation(conn_id, conn_type, _sqlite_file(str(host)), "")
    return DbLocation(conn_id, conn_type, None, f"{conn_type} connection {conn_id!r}")


def _sqlite_file(host: str) -> Path:
    if host.startswith("//"):  # POSIX keeps a leading "//", which a file: URI would read as a host
        host = "/" + host.lstrip("/")
    path = Path(host).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def locate_db(conn_id: str | None = None) -> DbLocation:
    """Resolve the ``attribution_db`` connection: from its environment variable, else from Airflow.

    :raises LookupError: when the connection is not defined anywhere.
    """
    conn_id = conn_id or os.environ.get(DB_CONN_ID_ENV) or DEFAULT_DB_CONN_ID
    location = _from_env(conn_id)
    if location is not None:
        return location
    try:
        from airflow.models.connection import Connection

        conn = Connection.get_connection_from_secrets(conn_id)
    except Exception as exc:  # not defined, or no Airflow metadata database here
        raise LookupError(f"connection {conn_id!r} is not defined ({type(exc).__name__})") from exc
    if conn.conn_type == "sqlite":
        return DbLocation(conn_id, "sqlite", _sqlite_file(conn.host or ""), "")
    return DbLocation(conn_id, conn.conn_type or "", None, f"{conn.conn_type} connection {conn_id!r}")


_TOTAL_SQL = f"SELECT COUNT(*) FROM {ISSUES_TABLE}"
_BY_REASON_SQL = f"SELECT reason, COUNT(*) FROM {ISSUES_TABLE} GROUP BY reason ORDER BY COUNT(*) DESC, reason"
_LATEST_SQL = (
    f"SELECT conv_id, reason, detail, run_id, recorded_at FROM {ISSUES_TABLE} "
    "ORDER BY recorded_at DESC, conv_id, reason LIMIT ?"
)


def _query_sqlite(path: Path, limit: int) -> tuple[int, list, list]:
    if not path.is_file():
        raise FileNotFoundError(f"database file {path} does not exist")
    uri = "file:" + path.as_posix().replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT_SECONDS)) as conn:
        total = conn.execute(_TOTAL_SQL).fetchone()[0]
        by_reason = conn.execute(_BY_REASON_SQL).fetchall()
        latest = conn.execute(_LATEST_SQL, (limit,)).fetchall()
    return total, by_reason, latest


def _query_hook(conn_id: str, limit: int) -> tuple[int, list, list]:
    from airflow.models.connection import Connection

    hook: Any = Connection.get_connection_from_secrets(conn_id).get_hook()
    total = hook.get_first(_TOTAL_SQL)[0]
    by_reason = hook.get_records(_BY_REASON_SQL)
    latest = hook.get_records(_LATEST_SQL.replace("?", "%s"), parameters=(limit,))
    return total, by_reason, latest


def _is_missing_table(exc: Exception) -> bool:
    text = str(exc).lower()
    return ISSUES_TABLE in text and ("no such table" in text or "does not exist" in text)


def read_issues(limit: int = 200, conn_id: str | None = None) -> IssuesView:
    """Open issues of the attribution database; never raises, an error becomes ``view.error``."""
    view = IssuesView()
    try:
        location = locate_db(conn_id)
    except (LookupError, ValueError) as exc:
        view.error = str(exc)
        return view
    view.source = str(location.sqlite_path) if location.sqlite_path else location.description
    try:
        if location.sqlite_path is not None:
            total, by_reason, latest = _query_sqlite(location.sqlite_path, limit)
        else:
            total, by_reason, latest = _query_hook(location.conn_id, limit)
    except Exception as exc:  # the page must render whatever state the database is in
        if _is_missing_table(exc):
            view.table_missing = True
        else:
            view.error = f"{type(exc).__name__}: {exc}"
        return view
    view.total = int(total)
    view.by_reason = [(str(reason), int(count)) for reason, count in by_reason]
    view.latest = [_issue(row) for row in latest]
    return view


def _issue(row: Sequence[Any]) -> Issue:
    conv_id, reason, detail, run_id, recorded_at = row
    return Issue(str(conv_id), str(reason), "" if detail is None else str(detail), str(run_id), str(recorded_at))
