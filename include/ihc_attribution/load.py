"""Stage 5: publish the run's answers to ``attribution_customer_journey`` and its issues, in one transaction.

The run's conversions get the staged answers (with dated, exact credit in ``attribution_credit`` and
their journeys in ``attribution_journeys``) and issues, and the report dates the change affects are
recorded for the report stage. A run owns the conversions of its days (its range and the days it
re-attributes): credit and issues recorded under those days that it no longer finds there go.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from ihc_attribution import credit, drift, sources
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import BYTE_ORDER, Database
from ihc_attribution.errors import PermanentError
from ihc_attribution.ihc.answers import SUM_TOLERANCE
from ihc_attribution.validation import UNPLACEABLE


class LoadError(PermanentError, RuntimeError):
    """The staged answers are incomplete or inconsistent; nothing was published."""


@dataclass
class LoadSummary:
    conversions_attributed: int = 0
    rows: int = 0
    issues: int = 0
    report_dates: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_RUN_CONVS = "SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?"
_RUN_ISSUE_CONVS = "SELECT conv_id FROM attribution_stg_issues WHERE run_id = ?"
_EXTRA_DAYS = "SELECT day FROM attribution_stg_extra_days WHERE run_id = ?"
_SOURCE_CONVS = "SELECT CAST(conv_id AS TEXT) FROM {conversions} WHERE conv_id IS NOT NULL"


def load_attribution(db: Database, run_id: str, run_range: RunRange, *, recorded_at: str | None = None) -> LoadSummary:
    """Replace the attribution and issues of the run's conversions with the staged answers.

    :raises LoadError: when a planned request has no answer or an answered journey does not
        sum to 1; the tables are left as they were.
    """
    recorded_at = recorded_at or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    summary = LoadSummary()
    with db.transaction():
        unanswered = db.scalar(
            "SELECT COUNT(*) FROM attribution_stg_requests WHERE run_id = ? AND status <> 'done'", (run_id,)
        )
        if unanswered:
            raise LoadError(f"{unanswered} API requests of run {run_id} have no answer: re-run the call_ihc_api task")
        bad = db.query(
            "SELECT conv_id, SUM(ihc) FROM attribution_stg_results WHERE run_id = ? "
            "GROUP BY conv_id HAVING ABS(SUM(ihc) - 1) > ?",
            (run_id, SUM_TOLERANCE),
        )
        if bad:
            raise LoadError(f"{len(bad)} journeys do not sum to 1, e.g. {bad[0][0]}: {bad[0][1]}")

        # The run's conversions are replaced; those credited as of the run's days that it no longer
        # finds there (moved to another day) and those no longer in the source (a refund deleted
        # them) lose their credit. The dates credited before are rebuilt too.
        first, last = run_range.first_date.isoformat(), run_range.last_date.isoformat()
        gone = (f"SELECT conv_id FROM attribution_credit WHERE (conv_date BETWEEN ? AND ?) "
                f"OR conv_date IN ({_EXTRA_DAYS}) "
                f"OR conv_id NOT IN ({_SOURCE_CONVS.format(conversions=sources.relation(db, sources.CONVERSIONS))})")
        replaced = f"conv_id IN ({_RUN_CONVS}) OR conv_id IN ({gone})"
        params = (run_id, first, last, run_id)
        _add_report_dates(db, f"SELECT DISTINCT ?, date FROM attribution_credit WHERE {replaced}",
                          (run_id, *params))
        for table in ("attribution_journeys", "attribution_customer_journey", "attribution_credit"):
            db.execute(f"DELETE FROM {table} WHERE {replaced}", params)
        summary.rows = db.execute(
            "INSERT INTO attribution_customer_journey (conv_id, session_id, ihc) "
            "SELECT conv_id, session_id, ihc FROM attribution_stg_results WHERE run_id = ?",
            (run_id,),
        )
        credited = db.execute(_credit_sql(db), (run_id,))
        db.execute(_JOURNEYS_SQL.format(byte_order=BYTE_ORDER[db.dialect]), (run_id, run_id))
        drift.forget(db, run_id)
        if credited != summary.rows:
            raise LoadError(f"{summary.rows - credited} answered sessions of run {run_id} are not in its journeys")
        _add_report_dates(db, f"SELECT DISTINCT ?, date FROM attribution_credit WHERE conv_id IN ({_RUN_CONVS})",
                          (run_id, run_id))
        db.executemany(
            "INSERT INTO attribution_stg_report_dates (run_id, report_date) VALUES (?, ?) "
            "ON CONFLICT (run_id, report_date) DO NOTHING",
            [(run_id, d) for d in run_range.dates()],
        )
        _add_report_dates(db, "SELECT ?, day FROM attribution_stg_extra_days WHERE run_id = ?", (run_id, run_id))
        # Every run records every conversion whose date cannot be read at all: those rows are its own too.
        db.execute(
            f"DELETE FROM attribution_issues WHERE conv_id IN ({_RUN_CONVS}) OR conv_id IN ({_RUN_ISSUE_CONVS}) "
            f"OR conv_date BETWEEN ? AND ? OR conv_date IN ({_EXTRA_DAYS}) OR reason = ?",
            (run_id, run_id, first, last, run_id, UNPLACEABLE),
        )
        summary.issues = db.execute(
            "INSERT INTO attribution_issues (conv_id, reason, detail, run_id, recorded_at, conv_date) "
            "SELECT i.conv_id, i.reason, i.detail, i.run_id, ?, c.conv_date FROM attribution_stg_issues i "
            "LEFT JOIN attribution_stg_conversions c ON c.run_id = i.run_id AND c.conv_id = i.conv_id "
            "WHERE i.run_id = ?",
            (recorded_at, run_id),
        )
        summary.conversions_attributed = int(
            db.scalar("SELECT COUNT(DISTINCT conv_id) FROM attribution_stg_results WHERE run_id = ?", (run_id,))
        )
        summary.report_dates = int(
            db.scalar("SELECT COUNT(*) FROM attribution_stg_report_dates WHERE run_id = ?", (run_id,))
        )
    return summary


def _credit_sql(db: Database) -> str:
    """The run's answers as credit rows (see :mod:`credit`), from the journeys the run sent."""
    return credit.insert_sql(
        db,
        "SELECT r.conv_id, c.conv_date, c.conv_date || ' ' || c.conv_time AS conv_ts, c.user_id, r.session_id, "
        "s.event_ts AS ts, "
        "s.channel_name, r.ihc, c.revenue "
        "FROM attribution_stg_results r "
        "JOIN attribution_stg_sessions s ON s.run_id = r.run_id AND s.conv_id = r.conv_id AND s.session_id = r.session_id "
        "JOIN attribution_stg_conversions c ON c.run_id = r.run_id AND c.conv_id = r.conv_id "
        "WHERE r.run_id = ?",
    )


# What each journey the run published was (see drift.py): its window and sessions from the
# staging, the sessions sent and the earliest of them from the credit just written (ties of a
# second broken in byte order, as the journeys' cut breaks them).
_JOURNEYS_SQL = """
INSERT INTO attribution_journeys (conv_id, user_id, conv_date, conv_ts, since_ts, sessions, sent, first_ts,
                                  first_session_id, revenue_micros)
SELECT c.conv_id, cr.user_id, cr.conv_date, cr.conv_ts, w.since_ts, c.n_sessions, cr.n, cr.session_ts, cr.session_id,
       cr.revenue_micros
FROM attribution_stg_conversions c
JOIN (
    SELECT conv_id, user_id, conv_date, conv_ts, session_ts, session_id, revenue_micros,
           COUNT(*) OVER (PARTITION BY conv_id) AS n,
           ROW_NUMBER() OVER (PARTITION BY conv_id ORDER BY session_ts, session_id{byte_order}) AS pos
    FROM attribution_credit WHERE conv_id IN (SELECT conv_id FROM attribution_stg_results WHERE run_id = ?)
) AS cr ON cr.conv_id = c.conv_id AND cr.pos = 1
LEFT JOIN attribution_stg_journey_windows w ON w.run_id = c.run_id AND w.conv_id = c.conv_id
WHERE c.run_id = ?
"""


def _add_report_dates(db: Database, select_sql: str, params: tuple) -> None:
    db.execute(
        "INSERT INTO attribution_stg_report_dates (run_id, report_date) "
        f"{select_sql} ON CONFLICT (run_id, report_date) DO NOTHING",
        params,
    )
