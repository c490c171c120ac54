"""Spend per (session date, channel), read from the source tables into ``attribution_spend`` (micro-euros).

:func:`read` reads the figures of some dates into temporary tables, outside the write transaction
(on SQLite in slices of rowids, so a loader's commit waits for one short statement at a time);
:func:`publish` then replaces the package's rows in the caller's transaction and records each date
read in ``attribution_spend_dates``: a date's spend is as of the last run that read it.
"""

from __future__ import annotations

from ihc_attribution import sources
from ihc_attribution.db import Database
from ihc_attribution.schema import SESSION_COSTS, SESSION_SOURCES, has_index_on, has_unique_key, rowid_slices
from ihc_attribution.validation import MAX_MONEY

SPEND = "attribution_spend"
SPEND_DATES = "attribution_spend_dates"
#: The dates to refresh, and (SQLite) their figures as read: temporary tables of the connection.
TODO = "attribution_tmp_spend_dates"
READ = "attribution_tmp_spend"
_COLUMNS = ("date TEXT, channel_name TEXT, session_rows INT, sessions INT, cost_rows INT, null_costs INT, "
            "negative_costs INT, unusable_costs INT, cost_micros BIGINT")
_NAMES = ", ".join(column.split()[0] for column in _COLUMNS.split(", "))

# Dates as values, and on PostgreSQL a SELECT whose rows are inserted apart: it runs neither an
# INSERT ... SELECT nor a read of a temporary table in parallel (2.9 s against 1.5 s at 2.47M).
_FIGURES = """
SELECT CAST(s.event_date AS TEXT), s.channel_name, {rows}, COUNT({distinct}s.session_id), COUNT(c.session_id),
       SUM(CASE WHEN c.session_id IS NOT NULL AND c.cost IS NULL THEN 1 ELSE 0 END),
       SUM(CASE WHEN c.cost < 0 AND {usable} THEN 1 ELSE 0 END),
       SUM(CASE WHEN c.cost IS NOT NULL AND NOT ({usable}) THEN 1 ELSE 0 END),
       COALESCE(SUM(CASE WHEN {usable} THEN {cost} END), 0)
FROM {sessions} s
LEFT JOIN {costs} c ON c.session_id = s.session_id
WHERE {event_date} IN ({dates}){slice}
GROUP BY CAST(s.event_date AS TEXT), s.channel_name
"""


#: Up to this many dates, SQLite reads them through an index on ``event_date`` when the user has
#: one; more dates are read in one scan of the table, which then costs less than a random read per
#: row (a first run over 90 dates: 3.9 s scanning against 9.2 s through the index, at 2.47M sessions).
INDEXED_DATES = 7


def figures_sql(db: Database, n_dates: int = 1, sliced: bool = False) -> str:
    """The query of the figures of ``n_dates`` dates, given as its ``n_dates`` parameters (text).

    ``sliced``: of the sessions of a range of rowids, given as two more parameters (see
    :func:`slices`); the figures of the slices add up to those of the whole table.

    A source table without a key on ``session_id`` (an export, a view) may hold a row twice: it
    is the same session, or the same cost, and counts once.
    """
    keyed_sessions = has_unique_key(db, SESSION_SOURCES, "session_id")
    keyed_costs = has_unique_key(db, SESSION_COSTS, "session_id")
    # Copies of a row are counted (the duplicated-ids warning) but make one session.
    sessions = sources.table(db, SESSION_SOURCES) if keyed_sessions else (
        f"(SELECT session_id, event_date, channel_name, COUNT(*) AS copies FROM {sources.relation(db, SESSION_SOURCES)} "
        "GROUP BY session_id, event_date, channel_name)"
    )
    costs = (sources.table(db, SESSION_COSTS) if keyed_costs
             else f"(SELECT DISTINCT session_id, cost FROM {sources.relation(db, SESSION_COSTS)})")
    return _FIGURES.format(
        rows="COUNT(*)" if keyed_sessions else "SUM(s.copies)",
        distinct="" if keyed_sessions else "DISTINCT ",
        usable=f"ABS(c.cost) <= {MAX_MONEY}",  # not NaN (PostgreSQL), infinite or absurd
        cost=db.units("c.cost", 6, numeric=sources.column_type(db, SESSION_COSTS, "cost").startswith("numeric")),
        sessions=sessions,
        costs=costs,
        dates=", ".join([sources.as_type_of(db, "?", SESSION_SOURCES, "event_date")] * n_dates),
        # A unary + keeps SQLite off the index (PostgreSQL's planner weighs it from the statistics).
        event_date="+s.event_date" if db.is_sqlite and n_dates > INDEXED_DATES else "s.event_date",
        slice=" AND s.rowid BETWEEN ? AND ?" if sliced else "",
    )


def slices(db: Database, n_dates: int) -> list[tuple[int, int]] | None:
    """Rowid ranges to read the figures of ``n_dates`` dates in (see :func:`schema.rowid_slices`), or None.

    Only where the read is a scan of a keyed table: a few dates behind the user's index on
    ``event_date`` are read through it in one short statement, and the figures of a table without
    a key need all its rows at once (a row present twice counts once).
    """
    if n_dates <= INDEXED_DATES and has_index_on(db, SESSION_SOURCES, "event_date"):
        return None
    if not has_unique_key(db, SESSION_SOURCES, "session_id") or not has_unique_key(db, SESSION_COSTS, "session_id"):
        return None
    return rowid_slices(db, SESSION_SOURCES)


def read(db: Database, dates_sql: str, params: tuple = ()) -> list[tuple] | None:
    """Read the spend of the dates ``dates_sql`` selects (one column: text dates, none NULL) from the sources.

    Returns the figures' rows, or None on SQLite, where they stay in the temporary table :data:`READ`
    (a name that is not valid UTF-8 stays as stored).
    """
    drop(db)
    db.execute(f"CREATE TEMP TABLE {TODO} (date TEXT PRIMARY KEY)")
    db.execute(
        f"INSERT INTO {TODO} (date) SELECT todo.* FROM ({dates_sql}) AS todo WHERE 1 = 1 ON CONFLICT (date) DO NOTHING",
        params,
    )
    dates = [d for (d,) in db.query(f"SELECT date FROM {TODO} ORDER BY date")]
    if not dates:
        return []
    if not db.is_sqlite:
        return db.query(figures_sql(db, len(dates)), dates)
    db.execute(f"CREATE TEMP TABLE {READ} ({_COLUMNS})")
    ranges = slices(db, len(dates))
    if ranges is None:
        db.execute(f"INSERT INTO {READ} ({_NAMES}) " + figures_sql(db, len(dates)), dates)
    for low, high in ranges or ():
        db.execute(f"INSERT INTO {READ} ({_NAMES}) " + figures_sql(db, len(dates), sliced=True), [*dates, low, high])
    return None


def publish(db: Database, run_id: str, figures: list[tuple] | None) -> int:
    """Replace the spend of the dates :func:`read` read with its ``figures``, as read by ``run_id``; return how many dates."""
    db.execute(f"DELETE FROM {SPEND} WHERE date IN (SELECT date FROM {TODO})")
    if figures is None:  # the figures of each slice read, added up
        sums = ", ".join(f"SUM({name})" for name in _NAMES.split(", ")[2:])
        db.execute(f"INSERT INTO {SPEND} ({_NAMES}) SELECT date, channel_name, {sums} FROM {READ} "
                   "GROUP BY date, channel_name")
    elif figures:
        db.executemany(f"INSERT INTO {SPEND} ({_NAMES}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", figures)
    db.execute(f"DELETE FROM {SPEND_DATES} WHERE date IN (SELECT date FROM {TODO})")
    return db.execute(f"INSERT INTO {SPEND_DATES} (date, run_id) SELECT date, ? FROM {TODO}", (run_id,))


def drop(db: Database) -> None:
    for table in (TODO, READ):
        db.execute(f"DROP TABLE IF EXISTS {table}")

