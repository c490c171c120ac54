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

from ihc_attribution.db import Database
from ihc_attribution.schema import SESSION_COSTS, SESSION_SOURCES, has_unique_key

SPEND = "attribution_spend"
SPEND_DATES = "attribution_spend_dates"
#: The dates to refresh, one transaction's worth (a temporary table of the connection).
TODO = "attribution_tmp_spend_dates"

_FIGURES = """
INSERT INTO {spend} (date, channel_name, session_rows, sessions, cost_rows, null_costs, negative_costs, cost_micros)
SELECT CAST(s.event_date AS TEXT), s.channel_name, {rows}, COUNT({distinct}s.session_id), COUNT(c.session_id),
       SUM(CASE WHEN c.session_id IS NOT NULL AND c.cost IS NULL THEN 1 ELSE 0 END),
       SUM(CASE WHEN c.cost < 0 THEN 1 ELSE 0 END),
       COALESCE(SUM({cost}), 0)
FROM {sessions} s
LEFT JOIN {costs} c ON c.session_id = s.session_id
WHERE {event_date} IN (SELECT {date} FROM {todo})
GROUP BY CAST(s.event_date AS TEXT), s.channel_name
"""


#: Up to this many dates, SQLite reads them through an index on ``event_date`` when the user has
#: one; more dates are read in one scan of the table, which then costs less than a random read per
#: row (a first run over 90 dates: 3.9 s scanning against 9.2 s through the index, at 2.47M sessions).
INDEXED_DATES = 7


def figures_sql(db: Database, n_dates: int = 1) -> str:
    """The statement that computes the figures of the ``n_dates`` dates in :data:`TODO`.

    A source table without a key on ``session_id`` (an export, a view) may hold a row twice: it
    is the same session, or the same cost, and counts once.
    """
    keyed_sessions = has_unique_key(db, SESSION_SOURCES, "session_id")
    keyed_costs = has_unique_key(db, SESSION_COSTS, "session_id")
    # Copies of a row are counted (the duplicated-ids warning) but make one session.
    sessions = SESSION_SOURCES if keyed_sessions else (
        f"(SELECT session_id, event_date, channel_name, COUNT(*) AS copies FROM {SESSION_SOURCES} "
        "GROUP BY session_id, event_date, channel_name)"
    )
    costs = SESSION_COSTS if keyed_costs else f"(SELECT DISTINCT session_id, cost FROM {SESSION_COSTS})"
    return _FIGURES.format(
        spend=SPEND,
        rows="COUNT(*)" if keyed_sessions else "SUM(s.copies)",
        distinct="" if keyed_sessions else "DISTINCT ",
        cost=db.units("c.cost", 6, numeric=db.column_type(SESSION_COSTS, "cost").startswith("numeric")),
        sessions=sessions,
        costs=costs,
        date=db.as_type_of("date", SESSION_SOURCES, "event_date"),
        # A unary + keeps SQLite off the index (PostgreSQL's planner weighs it from the statistics).
        event_date="+s.event_date" if db.is_sqlite and n_dates > INDEXED_DATES else "s.event_date",
        todo=TODO,
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
    n_dates = int(db.scalar(f"SELECT COUNT(*) FROM {TODO}"))
    if not db.is_sqlite:
        db.execute(f"ANALYZE {TODO}")  # without statistics the planner reads every session for a day
    db.execute(f"DELETE FROM {SPEND} WHERE date IN (SELECT date FROM {TODO})")
    db.execute(figures_sql(db, n_dates))
    db.execute(f"DELETE FROM {SPEND_DATES} WHERE date IN (SELECT date FROM {TODO})")
    n = db.execute(f"INSERT INTO {SPEND_DATES} (date, run_id) SELECT date, ? FROM {TODO}", (run_id,))
    db.execute(f"DROP TABLE {TODO}")
    return n
