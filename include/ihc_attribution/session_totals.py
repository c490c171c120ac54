"""Totals of the source tables per (session date, channel), kept in step with them.

The report's spend and the run's source-data warnings need, for every date they cover, all
sessions of that date with their cost rows: on a database of millions of sessions, a pass over
both source tables. ``attribution_session_totals`` holds those figures, computed once in one
pass and then kept in step:

- triggers on ``session_sources`` and ``session_costs`` record in
  ``attribution_session_totals_stale`` the session dates that any insert, update or delete
  touches (a date that cannot be known, such as a NULL one, or a PostgreSQL ``TRUNCATE``, is
  recorded as ``*``: everything);
- :func:`refresh` recomputes the recorded dates only, in the caller's transaction;
- when the triggers are missing (the first run on a database, or a source table dropped and
  created again, which drops its triggers) or cannot be created (no privilege), or when a
  source table has no key on ``session_id`` (a row may then be present twice, and the figures
  are taken over distinct rows), everything is recomputed.

So the figures are always those of the source tables at the time of the refresh, whatever
wrote to them.

A date's figures are computed from all sessions of that date, which on SQLite means a pass over
``session_sources``, except for a date that had no session at the last refresh and has since only
been given new rows (the next day's sessions of a daily load): its sessions are then all above
the largest rowid of the last refresh (``attribution_session_totals_state``), and only the rows
above it are read. Triggers record in ``attribution_session_totals_moved`` the dates where that
does not hold: a row inserted at or below that rowid (an explicit or reused rowid), and a row
updated in any way (it may have moved to another date or rowid).

On a large SQLite database, recomputing everything is split over several processes by
session date (see :func:`_figures_in_processes`): each date's figures are still
computed by one statement over the same rows in the same order, so they are the same to the bit.

Rows per (date, channel): ``session_rows``, ``sessions`` (those with a session id),
``cost_rows`` (sessions with a ``session_costs`` row), ``null_costs``, ``negative_costs`` and
``cost`` (the sum of the costs; NULL and missing costs add nothing).
``date`` is the session date as text (``NULL`` when the session has none; a malformed date is
kept as it is, so that it can be counted), ``channel_name`` as stored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ihc_attribution import sqlite_processes
from ihc_attribution.db import Database
from ihc_attribution.schema import SESSION_COSTS, SESSION_SOURCES, has_unique_key
from ihc_attribution.settings import env_flag

log = logging.getLogger(__name__)

TOTALS = "attribution_session_totals"
STALE = "attribution_session_totals_stale"
EVERYTHING = "*"
OUTDATED = "attribution_report_outdated_dates"
MOVED = "attribution_session_totals_moved"
STATE = "attribution_session_totals_state"
# The largest rowid of session_sources when the totals were last brought in step (SQLite).
_WATERMARK = "max_rowid"
CLAIMED = "attribution_tmp_claimed_dates"
BEFORE = "attribution_tmp_totals_before"

# The figures of one group of session rows joined with their cost rows (``s`` and ``c``).
_FIGURES = """
SELECT CAST(s.event_date AS TEXT) AS date, s.channel_name AS channel_name, COUNT(*) AS session_rows,
       COUNT(s.session_id) AS sessions, COUNT(c.session_id) AS cost_rows,
       SUM(CASE WHEN c.session_id IS NOT NULL AND c.cost IS NULL THEN 1 ELSE 0 END) AS null_costs,
       SUM(CASE WHEN c.cost < 0 THEN 1 ELSE 0 END) AS negative_costs,
       COALESCE(SUM(c.cost), 0) AS cost
FROM {sessions} s
LEFT JOIN {costs} c ON c.session_id = s.session_id
{where}
GROUP BY CAST(s.event_date AS TEXT), s.channel_name
"""
_INSERT = (
    f"INSERT INTO {TOTALS} (date, channel_name, session_rows, sessions, cost_rows, null_costs, negative_costs, cost) "
)
# Source tables without a key on session_id may hold a row twice: it is the same session and
# the same cost, counted once (a session with two different cost rows has both summed).
_DISTINCT_SESSIONS = f"(SELECT DISTINCT session_id, event_date, channel_name FROM {SESSION_SOURCES})"
_DISTINCT_COSTS = f"(SELECT DISTINCT session_id, cost FROM {SESSION_COSTS})"

# --- triggers -------------------------------------------------------------------------------
# Names carry a version: triggers of an older definition are replaced, and everything recomputed.
_PREFIX = "attribution_totals_v1_"

# SQLite: row triggers; a date already recorded is not recorded again. A cost row's date is its
# session's (none when the session does not exist: the cost then belongs to no date), found by
# the session id of the row.
def _mark(value: str, table: str = STALE) -> str:
    """A trigger statement recording the session date ``value`` in ``table``."""
    return (
        f"INSERT INTO {table} (date) SELECT d FROM (SELECT COALESCE(CAST({value} AS TEXT), '{EVERYTHING}') AS d) "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE date = d);"
    )


def _stored_session_mark(match: str) -> str:
    """A trigger statement recording the date of the stored session that ``match`` selects."""
    return (
        f"INSERT INTO {STALE} (date) SELECT COALESCE(CAST(event_date AS TEXT), '{EVERYTHING}') FROM {SESSION_SOURCES} "
        f"WHERE {match} AND NOT EXISTS ("
        f"SELECT 1 FROM {STALE} WHERE date = COALESCE(CAST(event_date AS TEXT), '{EVERYTHING}'));"
    )


def _sqlite_triggers(rowids: bool = True) -> dict[str, str]:
    """The triggers on the source tables; ``rowids``: ``session_sources`` has rowids (not WITHOUT ROWID)."""
    sessions, costs = SESSION_SOURCES, SESSION_COSTS
    mark = _mark

    def cost_mark(row: str) -> str:
        return _stored_session_mark(f"session_id = {row}.session_id")

    # The stored session with the new row's id (the row a REPLACE deletes). A replaced cost row
    # has the id of the new one, so its session's date is recorded by the insert trigger anyway.
    replaced = cost_mark("NEW")
    triggers = {
        f"{_PREFIX}sessions_insert": (
            f"AFTER INSERT ON {sessions} BEGIN {mark(value='NEW.event_date')} END"
        ),
        f"{_PREFIX}sessions_delete": (
            f"AFTER DELETE ON {sessions} BEGIN {mark(value='OLD.event_date')} END"
        ),
        f"{_PREFIX}sessions_update": (
            f"AFTER UPDATE OF session_id, event_date, channel_name ON {sessions} "
            f"BEGIN {mark(value='OLD.event_date')} {mark(value='NEW.event_date')} END"
        ),
        # INSERT OR REPLACE (and UPDATE OR REPLACE) delete the row holding the same id without
        # firing delete triggers: that row's date is recorded before it goes.
        f"{_PREFIX}sessions_replace_insert": (
            f"BEFORE INSERT ON {sessions} BEGIN {replaced} END"
        ),
        f"{_PREFIX}sessions_replace_update": (
            f"BEFORE UPDATE OF session_id ON {sessions} WHEN NEW.session_id IS NOT OLD.session_id "
            f"BEGIN {replaced} END"
        ),
        f"{_PREFIX}costs_insert": f"AFTER INSERT ON {costs} BEGIN {cost_mark(row='NEW')} END",
        # A deleted cost row's session still exists (or its own delete trigger records the date).
        f"{_PREFIX}costs_delete": f"AFTER DELETE ON {costs} BEGIN {cost_mark(row='OLD')} END",
        f"{_PREFIX}costs_update": (
            f"AFTER UPDATE OF session_id, cost ON {costs} BEGIN {cost_mark(row='OLD')} {cost_mark(row='NEW')} END"
        ),
    }
    if rowids:
        # A date whose sessions may no longer all lie above the watermark (see the module's docstring).
        moved = _mark("NEW.event_date", MOVED)
        # The stored session at the new row's rowid: the row an INSERT or UPDATE OR REPLACE that
        # names a rowid deletes, without firing delete triggers. (Where the rowid is not given,
        # SQLite leaves it undefined in a BEFORE trigger: whatever row it names, recording one
        # more date is harmless.)
        replaced_rowid = _stored_session_mark("rowid = NEW.rowid")
        triggers[f"{_PREFIX}sessions_moved"] = f"AFTER UPDATE ON {sessions} BEGIN {moved} END"
        triggers[f"{_PREFIX}sessions_insert_below"] = (
            f"AFTER INSERT ON {sessions} "
            f"WHEN NEW.rowid <= (SELECT value FROM {STATE} WHERE name = '{_WATERMARK}') BEGIN {moved} END"
        )
        triggers[f"{_PREFIX}sessions_replace_rowid_insert"] = f"BEFORE INSERT ON {sessions} BEGIN {replaced_rowid} END"
        # A row given another rowid also changes the order in which its date's costs are summed.
        triggers[f"{_PREFIX}sessions_replace_rowid_update"] = (
            f"BEFORE UPDATE ON {sessions} WHEN NEW.rowid IS NOT OLD.rowid "
            f"BEGIN {replaced_rowid} {mark('OLD.event_date')} END"
        )
    return triggers


# PostgreSQL: statement triggers with transition tables (one row of the stale table per
# statement and date, so a COPY of millions of rows records each date once). The function runs
# with its owner's rights and search path, so a loader with another role or search path can
# write to the source tables without knowing of the pipeline's tables.
_PG_FUNCTION = "attribution_totals_v1_mark"
_PG_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION {schema}.{function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $body$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO {stale} (date) VALUES ('{everything}');
    ELSIF TG_TABLE_NAME = '{sessions}' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO {stale} (date)
            SELECT DISTINCT COALESCE(CAST(n.event_date AS TEXT), '{everything}') FROM new_rows n;
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            INSERT INTO {stale} (date)
            SELECT DISTINCT COALESCE(CAST(o.event_date AS TEXT), '{everything}') FROM old_rows o;
        END IF;
    ELSE
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO {stale} (date)
            SELECT DISTINCT COALESCE(CAST(s.event_date AS TEXT), '{everything}')
            FROM new_rows n JOIN {sessions} s ON s.session_id = n.session_id;
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            INSERT INTO {stale} (date)
            SELECT DISTINCT COALESCE(CAST(s.event_date AS TEXT), '{everything}')
            FROM old_rows o JOIN {sessions} s ON s.session_id = o.session_id;
        END IF;
    END IF;
    RETURN NULL;
END
$body$
"""


def _pg_triggers(schema: str) -> dict[str, str]:
    run = f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{_PG_FUNCTION}()"
    triggers = {}
    for table, short in ((SESSION_SOURCES, "sessions"), (SESSION_COSTS, "costs")):
        triggers[f"{_PREFIX}{short}_insert"] = f"AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows {run}"
        triggers[f"{_PREFIX}{short}_update"] = (
            f"AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows {run}"
        )
        triggers[f"{_PREFIX}{short}_delete"] = f"AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows {run}"
        triggers[f"{_PREFIX}{short}_truncate"] = f"AFTER TRUNCATE ON {table} {run}"
    return triggers


def _triggers_on(db: Database, table: str) -> list[str]:
    """Names of the user-defined triggers on ``table``."""
    if db.is_sqlite:
        rows = db.query("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,))
    else:
        rows = db.query("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = to_regclass(?)", (table,))
    return [str(name) for (name,) in rows]


def _existing_triggers(db: Database) -> set[str]:
    return {name for table in (SESSION_SOURCES, SESSION_COSTS) for name in _triggers_on(db, table)}


def _install_triggers(db: Database) -> None:
    """(Re)create the triggers; earlier versions of them are dropped. Raises when not allowed."""
    _drop_triggers(db)
    if db.is_sqlite:
        for name, body in _sqlite_triggers(_has_rowids(db)).items():
            db.execute(f"CREATE TRIGGER {name} {body}")
        return
    schema = db.scalar("SELECT current_schema()")
    db.execute(
        _PG_FUNCTION_SQL.format(
            schema=schema, function=_PG_FUNCTION, stale=STALE, sessions=SESSION_SOURCES, everything=EVERYTHING
        )
    )
    for name, body in _pg_triggers(schema).items():
        db.execute(f"CREATE TRIGGER {name} {body}")


def _drop_triggers(db: Database) -> None:
    """Drop the pipeline's triggers (of any version) from the source tables."""
    for table in (SESSION_SOURCES, SESSION_COSTS):
        for name in _triggers_on(db, table):
            if name.startswith("attribution_totals_"):
                db.execute(f"DROP TRIGGER IF EXISTS {name}" + ("" if db.is_sqlite else f" ON {table}"))


def _expected_triggers(db: Database) -> set[str]:
    return set(_sqlite_triggers(_has_rowids(db))) if db.is_sqlite else set(_pg_triggers("public"))


def _has_rowids(db: Database) -> bool:
    """Whether ``session_sources`` (SQLite) has rowids: not a WITHOUT ROWID table."""
    row = db.query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (SESSION_SOURCES,))
    # Table options follow the column list's closing parenthesis: WITHOUT ROWID, STRICT.
    return bool(row) and not re.search(r"\)[^)]*\bWITHOUT\s+ROWID\b[^)]*$", str(row[0][0] or ""), re.IGNORECASE)


@dataclass
class Refresh:
    """What :func:`refresh` recomputed: ``everything`` or ``dates`` (0 when nothing changed).

    ``processes``: how many processes computed the figures (more than 1 only for everything, see
    :func:`_figures_in_processes`). ``from_new_rows``: how many of the ``dates`` were computed from
    the rows added since the last refresh alone (see the module's docstring).
    """

    everything: bool = False
    dates: int = 0
    reason: str = ""
    processes: int = 1
    from_new_rows: int = 0


def triggers_setting() -> bool:
    """``$ATTRIBUTION_SOURCE_TRIGGERS``: 0/false/no keeps the source tables free of triggers (default on)."""
    return env_flag("ATTRIBUTION_SOURCE_TRIGGERS", True)


def refresh(db: Database, *, triggers: bool | None = None, processes: int | None = None) -> Refresh:
    """Bring ``attribution_session_totals`` in step with the source tables (in one transaction).

    :param triggers: keep the totals in step through triggers on the source tables; without
        them every refresh recomputes everything (default: :func:`triggers_setting`).
    :param processes: split a full recomputation on SQLite over this many processes (default:
        :func:`sqlite_processes.processes_setting`).
    """
    triggers = triggers_setting() if triggers is None else triggers
    processes = sqlite_processes.processes_setting() if processes is None else processes
    # Other processes read what is committed: they can take part only while the caller's
    # transaction has not changed anything yet (the write lock it holds keeps others from it).
    if not db.is_sqlite or db.has_written():
        processes = 1
    with db.transaction():
        result = _refresh(db, triggers, processes)
        if db.is_sqlite:
            _set_watermark(db)
        return result


def _refresh(db: Database, triggers: bool, processes: int) -> Refresh:
    """:func:`refresh`'s work, inside its transaction."""
    # The dates some write may have moved below the watermark, recorded since the last refresh.
    moved = _claim(db, MOVED) if db.is_sqlite else set()
    keyed = has_unique_key(db, SESSION_SOURCES, "session_id") and has_unique_key(db, SESSION_COSTS, "session_id")
    if not keyed:
        used = _recompute(db, distinct=True, processes=processes)
        return Refresh(everything=True, reason="a source table has no key on session_id", processes=used)
    if not triggers:
        _drop_triggers(db)
        used = _recompute(db, processes=processes)
        return Refresh(everything=True, reason="triggers are turned off (ATTRIBUTION_SOURCE_TRIGGERS)", processes=used)
    if not _expected_triggers(db) <= _existing_triggers(db):
        if _try_install_triggers(db):
            _claim(db)
        used = _recompute(db, processes=processes)
        return Refresh(everything=True, reason="first refresh, or the source tables were created again", processes=used)
    claimed = _claim(db)
    if EVERYTHING in claimed:
        used = _recompute(db, processes=processes)
        return Refresh(everything=True, reason="a change that touches every date", processes=used)
    watermark, new_dates = _dates_of_new_rows_only(db, claimed - moved)
    if claimed:
        _recompute(db, dates=claimed, new_dates=new_dates, watermark=watermark)
    return Refresh(dates=len(claimed), from_new_rows=len(new_dates))


def _try_install_triggers(db: Database) -> bool:
    """Install the triggers in a savepoint; without them (no privilege) every refresh recomputes all."""
    db.execute("SAVEPOINT attribution_totals_triggers")
    try:
        _install_triggers(db)
    except Exception as exc:  # a read-only role, a locked-down schema
        db.execute("ROLLBACK TO SAVEPOINT attribution_totals_triggers")
        db.execute("RELEASE SAVEPOINT attribution_totals_triggers")
        log.warning(
            "cannot create the triggers that keep %s in step (%s: %s); every run recomputes it in full",
            TOTALS, type(exc).__name__, exc,
        )
        return False
    db.execute("RELEASE SAVEPOINT attribution_totals_triggers")
    return True


def _claim(db: Database, table: str = STALE) -> set[str]:
    """Take the recorded dates off the stale table, or ``table`` (they are recomputed in this transaction).

    Deleting first is what keeps a concurrent writer's change from being lost on PostgreSQL: a
    date it records after this delete stays for the next refresh, and one it recorded before
    belongs to a change this transaction's later statements see.
    """
    return {str(d) for (d,) in db.query(f"DELETE FROM {table} RETURNING date") if d is not None}


def _set_watermark(db: Database) -> None:
    """Record the largest rowid of ``session_sources`` (SQLite), the totals being in step with it.

    An empty table records 0: the rows to come get rowids above it (one given explicitly at or
    below it marks its date as moved).
    """
    value = db.scalar(f"SELECT COALESCE(MAX(rowid), 0) FROM {SESSION_SOURCES}") if _has_rowids(db) else None
    db.execute(
        f"INSERT INTO {STATE} (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (_WATERMARK, value),
    )


def _dates_of_new_rows_only(db: Database, candidates: set[str]) -> tuple[int | None, set[str]]:
    """The watermark, and the ``candidates`` whose sessions all lie above it (SQLite).

    Those are the dates without any session at the last refresh (no totals row), provided that
    no write since has been recorded as moving rows of them (the caller leaves those out): all
    their rows were then inserted since, above the largest rowid of that refresh.
    """
    if not db.is_sqlite or not candidates or not _has_rowids(db):
        return None, set()
    watermark = db.scalar(f"SELECT value FROM {STATE} WHERE name = ?", (_WATERMARK,))
    if watermark is None:
        return None, set()
    present = {str(d) for (d,) in db.query(f"SELECT DISTINCT date FROM {TOTALS} WHERE date IS NOT NULL")}
    return int(watermark), candidates - present


_COLUMNS = "date, channel_name, session_rows, sessions, cost_rows, null_costs, negative_costs, cost"
# Dates whose figures differ before and after a recomputation: a row only one side holds.
_CHANGED_DATES = f"""
INSERT INTO {OUTDATED} (date)
SELECT DISTINCT date FROM (
    SELECT date FROM (
        SELECT {_COLUMNS} FROM {BEFORE}
        UNION ALL
        SELECT {_COLUMNS} FROM {TOTALS} {{where}}
    ) AS both_sides
    GROUP BY {_COLUMNS}
    HAVING COUNT(*) = 1
) AS changed
WHERE date IS NOT NULL
ON CONFLICT (date) DO NOTHING
"""


def _recompute(
    db: Database,
    *,
    distinct: bool = False,
    dates: set[str] | None = None,
    processes: int = 1,
    new_dates: set[str] = frozenset(),
    watermark: int | None = None,
) -> int:
    """Recompute the totals of ``dates`` (text of the session date), or of every date.

    ``new_dates`` (some of ``dates``) are computed from the rows above ``watermark`` alone (see
    :func:`_dates_of_new_rows_only`): each date's rows are still summed in rowid order, so the
    figures are those of a pass over the whole table to the bit.

    The dates whose figures changed are added to ``attribution_report_outdated_dates``: the
    report rows of those dates no longer match the sources (a session deleted or moved away
    from a date, a corrected cost), whichever run built them. Returns the number of processes
    that computed the figures.
    """
    where = ""
    if dates is not None:
        db.execute(f"DROP TABLE IF EXISTS {CLAIMED}")
        db.execute(f"CREATE TEMP TABLE {CLAIMED} (date TEXT PRIMARY KEY, new_rows_only INT NOT NULL)")
        db.executemany(
            f"INSERT INTO {CLAIMED} (date, new_rows_only) VALUES (?, ?)", [(d, int(d in new_dates)) for d in sorted(dates)]
        )
        where = f"WHERE date IN (SELECT date FROM {CLAIMED})"
    sources = {
        "sessions": _DISTINCT_SESSIONS if distinct else SESSION_SOURCES,
        "costs": _DISTINCT_COSTS if distinct else SESSION_COSTS,
    }
    parts = None
    if dates is None and processes > 1:
        parts = _figures_in_processes(db, sources, processes)
    db.execute(f"DROP TABLE IF EXISTS {BEFORE}")
    db.execute(f"CREATE TEMP TABLE {BEFORE} AS SELECT {_COLUMNS} FROM {TOTALS} {where}")
    db.execute(f"DELETE FROM {TOTALS} {where}")
    if dates is not None:
        _insert_dates(db, sources, dates, new_dates, watermark)
    elif parts is None:
        db.execute(_INSERT + _FIGURES.format(**sources, where=""))
    else:
        # In the order of the single statement's groups (by date, then channel).
        union = " UNION ALL ".join(f"SELECT {_COLUMNS} FROM {part}" for part in parts)
        db.execute(_INSERT + f"SELECT {_COLUMNS} FROM ({union}) AS parts ORDER BY date, channel_name")
    db.execute(_CHANGED_DATES.format(where=where))
    db.execute(f"DROP TABLE {BEFORE}")
    if dates is not None:
        db.execute(f"DROP TABLE {CLAIMED}")
    return 1 if parts is None else processes


def _insert_dates(
    db: Database, sources: dict[str, str], dates: set[str], new_dates: set[str], watermark: int | None
) -> None:
    """Insert the figures of the claimed ``dates``: ``new_dates`` from the rows above ``watermark``, the others from all."""
    of_claimed = f"CAST(s.event_date AS TEXT) IN (SELECT date FROM {CLAIMED} WHERE new_rows_only = %d)"
    if dates - new_dates:
        db.execute(_INSERT + _FIGURES.format(**sources, where="WHERE " + of_claimed % 0))
    if new_dates:
        db.execute(_INSERT + _FIGURES.format(**sources, where="WHERE s.rowid > ? AND " + of_claimed % 1), (watermark,))


# --- everything, over several processes (SQLite) -------------------------------------------
#
# The full pass spends most of its time sorting the rows of session_sources into their (date,
# channel) groups, on one CPU. On a large database it is split by session date over processes,
# each with its own read-only connection: every row goes to one of them by the day of its date
# (the number in the last two characters of its text, 0 for none), so all rows of a date are
# grouped by one statement, over the same rows in the same order as the single statement: each
# figure is the same to the bit, a float sum included. The rows are inserted in the order of the
# single statement's groups, so the table is the same row for row.
#
# The processes (sqlite_processes) see the source tables exactly as the caller does, provided
# the transaction has not changed anything yet (refresh() checks). Anything that keeps them from
# running leaves the work to the single statement, with a warning when a process failed.


def _part(processes: int, part: int) -> str:
    day = "abs(COALESCE(CAST(substr(CAST(s.event_date AS TEXT), -2) AS INTEGER), 0))"
    return f"WHERE {day} % {processes} = {part}"


def _figures_in_processes(db: Database, sources: dict[str, str], processes: int) -> list[str] | None:
    """The tables of a full recomputation's figures, one per process (attached to ``db``); None when not possible."""
    shared = sqlite_processes.shared_file(db, SESSION_SOURCES)
    if shared is None:
        return None
    queries = [_FIGURES.format(**sources, where=_part(processes, part)) for part in range(processes)]
    try:
        return sqlite_processes.query_tables(db, shared[0], queries)
    except Exception as exc:
        log.warning("computing %s in %d processes failed (%s); computing it in this one", TOTALS, processes, exc)
        return None
