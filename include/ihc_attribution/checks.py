"""The final check of a run and its summary.

Every conversion of the run's range must end up attributed (rows summing to 1) or listed in
``attribution_issues`` with a reason. A run where this does not hold fails, so nothing is lost
silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ihc_attribution import session_totals
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import Database, pg_text_not_a_date
from ihc_attribution.errors import PermanentError
from ihc_attribution.load import SUM_TOLERANCE
from ihc_attribution.schema import SESSION_COSTS, SESSION_SOURCES, has_unique_key


class CheckError(PermanentError, RuntimeError):
    """A conversion of the run is neither attributed nor recorded, or a journey is wrong."""


@dataclass
class RunSummary:
    """What a run did, for the log, XCom and the UI."""

    run_id: str
    range_start: str
    range_end: str
    conversions: int = 0
    attributed: int = 0
    issues_by_reason: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    cost: float = 0.0
    ihc: float = 0.0
    ihc_revenue: float = 0.0
    source_warnings: dict[str, int] = field(default_factory=dict)
    #: What the range covered, when that needs saying (no conversions, before the first one ...).
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        """A few human-readable lines."""
        issues = ", ".join(f"{k} {v}" for k, v in sorted(self.issues_by_reason.items())) or "none"
        return (
            f"run {self.run_id}: conversions [{self.range_start}, {self.range_end})\n"
            + (f"  NOTE: {self.note}\n" if self.note else "")
            + f"  conversions in range: {self.conversions}, attributed: {self.attributed}\n"
            f"  issues by reason: {issues}\n"
            f"  API requests: {self.requests}, retries: {self.retries}\n"
            f"  report totals over the range: cost {self.cost:.2f}, ihc {self.ihc:.4f}, "
            f"ihc_revenue {self.ihc_revenue:.2f}\n"
            f"  source data warnings over the range: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.source_warnings.items()) if v) or "none")
        )


def check_run(db: Database, run_id: str, run_range: RunRange) -> RunSummary:
    """Verify the run's outcome and summarise it.

    :raises CheckError: when a conversion of the range is neither attributed nor recorded with
        a reason, or an attributed journey does not sum to 1.
    """
    missing = db.query(
        "SELECT c.conv_id FROM attribution_stg_conversions c WHERE c.run_id = ? "
        "AND NOT EXISTS (SELECT 1 FROM attribution_customer_journey a WHERE a.conv_id = c.conv_id) "
        "AND NOT EXISTS (SELECT 1 FROM attribution_issues i WHERE i.conv_id = c.conv_id) "
        "ORDER BY c.conv_id",
        (run_id,),
    )
    if missing:
        ids = ", ".join(m[0] for m in missing[:10])
        raise CheckError(f"{len(missing)} conversions of the run are neither attributed nor recorded: {ids}")
    bad_sums = db.query(
        "SELECT a.conv_id, SUM(a.ihc) FROM attribution_customer_journey a "
        "WHERE a.conv_id IN (SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?) "
        "GROUP BY a.conv_id HAVING ABS(SUM(a.ihc) - 1) > ?",
        (run_id, SUM_TOLERANCE),
    )
    if bad_sums:
        raise CheckError(f"{len(bad_sums)} attributed journeys do not sum to 1, e.g. {bad_sums[0]}")

    summary = RunSummary(run_id=run_id, range_start=run_range.start_ts, range_end=run_range.end_ts)
    summary.conversions = int(
        db.scalar("SELECT COUNT(*) FROM attribution_stg_conversions WHERE run_id = ?", (run_id,))
    )
    summary.attributed = int(
        db.scalar(
            "SELECT COUNT(*) FROM attribution_stg_conversions c WHERE c.run_id = ? AND EXISTS "
            "(SELECT 1 FROM attribution_customer_journey a WHERE a.conv_id = c.conv_id)",
            (run_id,),
        )
    )
    summary.issues_by_reason = {
        reason: int(n)
        for reason, n in db.query(
            "SELECT reason, COUNT(*) FROM attribution_stg_issues WHERE run_id = ? GROUP BY reason", (run_id,)
        )
    }
    requests, attempts = db.query(
        "SELECT COUNT(*), COALESCE(SUM(attempts), 0) FROM attribution_stg_requests WHERE run_id = ?", (run_id,)
    )[0]
    summary.requests, summary.retries = int(requests), max(int(attempts) - int(requests), 0)
    cost, ihc, revenue = db.query(
        "SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(ihc), 0), COALESCE(SUM(ihc_revenue), 0) "
        "FROM channel_reporting WHERE date >= ? AND date <= ?",
        (run_range.first_date.isoformat(), run_range.last_date.isoformat()),
    )[0]
    summary.cost, summary.ihc, summary.ihc_revenue = round(cost, 2), round(ihc, 4), round(revenue, 2)
    summary.source_warnings = source_warnings(db, run_range)
    if summary.conversions == 0:
        summary.note = coverage_note(db, run_range)
    _record(db, summary)
    return summary


def coverage_note(db: Database, run_range: RunRange) -> str:
    """Why a range has no conversions, in words: before, after or between the data's conversions."""
    first, last = db.query(
        # Only date-shaped values: a malformed date ('0000-00-00', 'yesterday') says nothing of the data's span.
        "SELECT MIN(conv_date), MAX(conv_date) FROM conversions WHERE conv_date >= '1000-01-01' AND conv_date <= '9999-12-31'"
    )[0]
    note = "no conversions in this range: the report holds spend only"
    if first is None:
        return note + "; the conversions table is empty"
    first, last = str(first), str(last)
    if run_range.last_date.isoformat() < first:
        return note + f"; the range lies before the first conversion in the data ({first})"
    if run_range.first_date.isoformat() > last:
        return note + f"; the range lies after the last conversion in the data ({last})"
    return note + f"; the data holds conversions from {first} to {last}"


def _record(db: Database, summary: RunSummary) -> None:
    """Keep the run's outcome in ``attribution_run_results`` (one row per run, replaced on re-run)."""
    issues = sum(summary.issues_by_reason.values())
    with db.transaction():
        db.execute("DELETE FROM attribution_run_results WHERE run_id = ?", (summary.run_id,))
        db.execute(
            "INSERT INTO attribution_run_results (run_id, range_start, range_end, conversions, attributed, "
            "issues, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (summary.run_id, summary.range_start, summary.range_end, summary.conversions, summary.attributed,
             issues, summary.note or None),
        )


# Source tables without a key on session_id (a row may be present twice): the range's distinct
# sessions, and every cost row once with its session's date.
_RANGE_SESSIONS_SQL = """
SELECT COUNT(DISTINCT session_id), SUM(CASE WHEN channel_name IS NULL OR channel_name = '' THEN 1 ELSE 0 END)
FROM session_sources
WHERE event_date >= ? AND event_date <= ?
"""
_COST_ROWS_SQL = """
SELECT
    SUM(CASE WHEN s.session_id IS NULL THEN 1 ELSE 0 END),
    COUNT(DISTINCT CASE WHEN s.event_date >= ? AND s.event_date <= ? THEN s.session_id END),
    SUM(CASE WHEN c.cost IS NULL AND s.event_date >= ? AND s.event_date <= ? THEN 1 ELSE 0 END),
    SUM(CASE WHEN c.cost < 0 AND s.event_date >= ? AND s.event_date <= ? THEN 1 ELSE 0 END)
FROM session_costs c
LEFT JOIN session_sources s ON s.session_id = c.session_id
"""


# Sessions whose date is not a real YYYY-MM-DD date. On SQLite a DATE column holds any text;
# date(x, '+0 days') gives NULL for text it cannot read and normalises impossible days
# (2024-02-30 becomes 2024-03-01), so it differs from x for both.
_INVALID_DATE_SQL = {
    "sqlite": (
        "SELECT COUNT(*) FROM session_sources WHERE event_date IS NULL OR date(event_date, '+0 days') IS NOT event_date"
    ),
    "postgresql": "SELECT COUNT(*) FROM session_sources WHERE event_date IS NULL",
}


# Session ids of the range present more than once (counted once in the report's spend).
_DUPLICATE_SESSIONS_SQL = """
SELECT COUNT(*) FROM (
    SELECT session_id FROM session_sources WHERE event_date >= ? AND event_date <= ?
    GROUP BY session_id HAVING COUNT(*) > 1
) AS duplicated
"""


# When session_id is a key of both source tables (the challenge schema), no row is present twice
# and the figures come from the source tables' totals (see session_totals), kept in step with
# them: no pass over the sources unless they changed. Only NULL ids can then repeat. A cost row
# belongs to at most one session, so those without one are the rows not counted by any date.
_RANGE_TOTALS_SQL = f"""
SELECT SUM(sessions),
       SUM(CASE WHEN channel_name IS NULL OR channel_name = '' THEN session_rows ELSE 0 END),
       SUM(cost_rows), SUM(null_costs), SUM(negative_costs), SUM(session_rows - sessions)
FROM {session_totals.TOTALS}
WHERE date >= ? AND date <= ?
"""
_MATCHED_COST_ROWS_SQL = f"SELECT SUM(cost_rows) FROM {session_totals.TOTALS}"
_INVALID_TOTALS_DATE = {
    "sqlite": "date IS NULL OR date(date, '+0 days') IS NOT date",
    "postgresql": "date IS NULL",
}


def source_warnings(db: Database, run_range: RunRange) -> dict[str, int]:
    """Counts of source rows that the report treats specially.

    Of the range's dates: sessions without a cost row and NULL costs count as cost 0; negative
    costs are summed as they are (credits, refunds); sessions without a channel are counted here
    (a NULL channel is left out of ``channel_reporting``, an empty one is reported under "").
    Of the whole table, as they belong to no run's dates: cost rows whose session does not exist
    are ignored; sessions whose date is not a valid date cannot be put on any report date, so
    their cost is in no report row (and a journey holding one is quarantined). Session ids of
    the range present more than once are counted once in the spend, and a journey holding one is
    quarantined.
    """
    first, last = run_range.first_date.isoformat(), run_range.last_date.isoformat()
    if has_unique_key(db, SESSION_SOURCES, "session_id") and has_unique_key(db, SESSION_COSTS, "session_id"):
        session_totals.refresh(db)
        sessions, no_channel, with_cost_row, null_cost, negative, null_ids = db.query(_RANGE_TOTALS_SQL, (first, last))[0]
        orphans = int(db.scalar(f"SELECT COUNT(*) FROM {SESSION_COSTS}") or 0) - int(
            db.scalar(_MATCHED_COST_ROWS_SQL) or 0
        )
        duplicated = 1 if (null_ids or 0) > 1 else 0
        invalid = _INVALID_TOTALS_DATE[db.dialect]
        if not db.is_sqlite and db.is_text_column("session_sources", "event_date"):
            invalid = pg_text_not_a_date("date")
        invalid_dates = db.scalar(f"SELECT SUM(session_rows) FROM {session_totals.TOTALS} WHERE {invalid}")
        return _warnings(duplicated, sessions, with_cost_row, null_cost, negative, no_channel, orphans, invalid_dates)
    sessions, no_channel = db.query(_RANGE_SESSIONS_SQL, (first, last))[0]
    orphans, with_cost_row, null_cost, negative = db.query(_COST_ROWS_SQL, (first, last) * 3)[0]
    duplicated = db.scalar(_DUPLICATE_SESSIONS_SQL, (first, last))
    invalid_sql = _INVALID_DATE_SQL[db.dialect]
    if not db.is_sqlite and db.is_text_column("session_sources", "event_date"):
        invalid_sql = f"SELECT COUNT(*) FROM session_sources WHERE {pg_text_not_a_date('event_date')}"
    invalid_dates = db.scalar(invalid_sql)
    return _warnings(duplicated, sessions, with_cost_row, null_cost, negative, no_channel, orphans, invalid_dates)


def _warnings(duplicated, sessions, with_cost_row, null_cost, negative, no_channel, orphans, invalid_dates) -> dict:
    no_cost_row = (sessions or 0) - (with_cost_row or 0)
    return {
        "duplicated_session_ids": int(duplicated or 0),
        "sessions_without_cost_row": int(no_cost_row or 0),
        "null_costs": int(null_cost or 0),
        "negative_costs": int(negative or 0),
        "sessions_without_channel": int(no_channel or 0),
        "cost_rows_without_session": int(orphans or 0),
        "sessions_with_invalid_date": int(invalid_dates or 0),
    }
