"""Stage 6: rebuild ``channel_reporting`` for every date the run touched.

Per (channel, session date): ``cost`` is the sum of the costs of all sessions (NULL or missing
cost counts 0), ``ihc`` the sum of the stored credit of those sessions, ``ihc_revenue`` the sum
of credit x the conversion's revenue. Cost and attribution are aggregated separately and then
joined on (channel, date): joining all four tables at once would count a session's cost once
per journey it belongs to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ihc_attribution import session_totals
from ihc_attribution.db import Database

# Two parts:
# - cells and spend: every (channel, date) with a session, and its sessions' costs, from the
#   source tables' totals (see session_totals: one pass over the sources the first time, then
#   only the dates that changed);
# - credit: driven by the attribution rows (about 1% of the sessions), each finding its session
#   through session_sources' key. Revenue is looked up per attribution row, so a conversion id
#   present twice in the source (which the extraction quarantines) cannot count its credit twice.
# Report dates are staged as text, as the totals hold them; the session date is compared as text
# too (PostgreSQL would otherwise compare a DATE column with text).
# CROSS JOIN fixes the join order on SQLite; other databases treat it as an inner join.
_REPORT_DATES = "SELECT report_date FROM attribution_stg_report_dates WHERE run_id = ?"
_REPORT_SQL = f"""
INSERT INTO channel_reporting (channel_name, date, cost, ihc, ihc_revenue)
WITH credit AS (
    SELECT s.channel_name, CAST(s.event_date AS TEXT) AS date,
           SUM(a.ihc) AS ihc,
           SUM(a.ihc * (SELECT MIN(v.revenue) FROM conversions v WHERE v.conv_id = a.conv_id)) AS ihc_revenue
    FROM attribution_customer_journey a
    CROSS JOIN session_sources s
    WHERE s.session_id = a.session_id
      AND CAST(s.event_date AS TEXT) IN ({_REPORT_DATES}) AND s.channel_name IS NOT NULL
    GROUP BY s.channel_name, CAST(s.event_date AS TEXT)
)
SELECT t.channel_name, {{out_date}}, t.cost, COALESCE(credit.ihc, 0), COALESCE(credit.ihc_revenue, 0)
FROM {session_totals.TOTALS} t
LEFT JOIN credit ON credit.channel_name = t.channel_name AND credit.date = t.date
WHERE t.date IN ({_REPORT_DATES}) AND t.channel_name IS NOT NULL
"""


def report_sql(*, out_date: str = "t.date") -> str:
    """The statement that inserts the report rows of the run's dates (every ``?`` is the run id).

    ``out_date`` is the date as stored in ``channel_reporting.date`` (a cast on PostgreSQL where
    that column is a ``DATE``, see :meth:`Database.as_type_of`).
    """
    return _REPORT_SQL.format(out_date=out_date)


@dataclass
class ReportSummary:
    """Counts of the report stage."""

    dates: int = 0
    rows: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def build_report(
    db: Database,
    run_id: str,
    *,
    lookback_days: int | None = None,
    triggered_at: str | None = None,
    built_at: str = "",
) -> ReportSummary:
    """Replace the ``channel_reporting`` rows of the run's report dates, in one transaction.

    The report dates are those the run's load recorded, and the dates of existing report rows
    whose sources changed since (see :mod:`session_totals`). Every (channel, date) with at least
    one session gets a row, so days without attributed conversions still show their spend. Each rebuilt date is recorded in
    ``attribution_report_builds`` with the run and the look-back it was built with.
    """
    with db.transaction():
        session_totals.refresh(db)
        # Dates whose sources changed since their rows were built are rebuilt too (a session
        # deleted or moved away from a date is no longer found by the run's credited sessions).
        db.execute(
            "INSERT INTO attribution_stg_report_dates (run_id, report_date) "
            f"SELECT ?, o.date FROM {session_totals.OUTDATED} o WHERE EXISTS ("
            " SELECT 1 FROM channel_reporting r WHERE CAST(r.date AS TEXT) = o.date) "
            "ON CONFLICT (run_id, report_date) DO NOTHING",
            (run_id,),
        )
        db.execute(f"DELETE FROM {session_totals.OUTDATED}")
        n_dates = int(db.scalar("SELECT COUNT(*) FROM attribution_stg_report_dates WHERE run_id = ?", (run_id,)))
        dates = (
            "SELECT {d} FROM attribution_stg_report_dates WHERE run_id = ?"
        ).format(d=db.as_type_of("report_date", "channel_reporting", "date"))
        db.execute(f"DELETE FROM channel_reporting WHERE date IN ({dates})", (run_id,))
        sql = report_sql(out_date=db.as_type_of("t.date", "channel_reporting", "date"))
        rows = db.execute(sql, (run_id,) * sql.count("?"))
        db.execute(
            "DELETE FROM attribution_report_builds WHERE report_date IN "
            "(SELECT report_date FROM attribution_stg_report_dates WHERE run_id = ?)",
            (run_id,),
        )
        db.execute(
            "INSERT INTO attribution_report_builds (report_date, run_id, lookback_days, triggered_at, built_at) "
            "SELECT report_date, run_id, ?, ?, ? FROM attribution_stg_report_dates WHERE run_id = ?",
            (lookback_days, triggered_at, built_at, run_id),
        )
    return ReportSummary(dates=n_dates, rows=rows)
