"""Spend per (session date, channel), read from the source tables into the package's own table.

``attribution_spend`` holds, per session date and channel, the sessions and the sum of their
costs in micro-euros (exact integers: sums do not depend on their order), with the counts the
run's source warnings report. :func:`refresh` recomputes the figures of the dates it is given
by reading the sources (SELECT only) and records each date read in ``attribution_spend_dates``.

The report refreshes the dates of the run's own range every time, and any other report date it
needs that was never read: a date's spend is therefore as of the last run that covered it. A
change to the costs of other dates is taken in by re-running the days it touches, or by a run
with the ``refresh_spend`` param (see README, "When source data changes").
"""

from __future__ import annotations

from ihc_attribution import sources
from ihc_attribution.db import Database
from ihc_attribution.schema import SESSION_COSTS, SESSION_SOURCES, has_unique_key
from ihc_attribution.validation import MAX_MONEY

SPEND = "attribution_spend"
SPEND_DATES = "attribution_spend_dates"
#: The dates to refresh, one transaction's worth (a temporary table of the connection).
TODO = "attribution_tmp_spend_dates"

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
WHERE {event_date} IN ({dates})
GROUP BY CAST(s.event_date AS TEXT), s.channel_name
"""


#: Up to this many dates, SQLite reads them through an index on ``event_date`` when the user has
#: one; more dates are read in one scan of the table, which then costs less than a random read per
#: row (a first run over 90 dates: 3.9 s scanning against 9.2 s through the index, at 2.47M sessions).
INDEXED_DATES = 7


def figures_sql(db: Database, n_dates: int = 1) -> str:
    """The query of the figures of ``n_dates`` dates, given as its ``n_dates`` parameters (text).

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
    )


def refresh(db: Database, run_id: str, dates_sql: str, params: tuple = ()) -> int:
    """Recompute the spend of the dates ``dates_sql`` selects (one column: text dates, none NULL).

    Runs in the caller's transaction. Returns the number of dates refreshed.
    """
    db.execute(f"DROP TABLE IF EXISTS {TODO}")
    db.execute(f"CREATE TEMP TABLE {TODO} (date TEXT PRIMARY KEY)")
    db.execute(
        f"INSERT INTO {TODO} (date) SELECT todo.* FROM ({dates_sql}) AS todo WHERE 1 = 1 ON CONFLICT (date) DO NOTHING",
        params,
    )
    dates = [d for (d,) in db.query(f"SELECT date FROM {TODO} ORDER BY date")]
    db.execute(f"DELETE FROM {SPEND} WHERE date IN (SELECT date FROM {TODO})")
    insert = (f"INSERT INTO {SPEND} (date, channel_name, session_rows, sessions, cost_rows, null_costs, "
              "negative_costs, unusable_costs, cost_micros) ")
    if dates and db.is_sqlite:  # in the database: a name that is not valid UTF-8 stays as stored
        db.execute(insert + figures_sql(db, len(dates)), dates)
    elif dates:
        db.executemany(insert + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", db.query(figures_sql(db, len(dates)), dates))
    db.execute(f"DELETE FROM {SPEND_DATES} WHERE date IN (SELECT date FROM {TODO})")
    n = db.execute(f"INSERT INTO {SPEND_DATES} (date, run_id) SELECT date, ? FROM {TODO}", (run_id,))
    db.execute(f"DROP TABLE {TODO}")
    return n
