"""Stage 6: rebuild ``channel_reporting`` for every date the run touched.

Per (channel, session date): ``cost`` is the sum of the costs of all sessions (NULL or missing
cost counts 0), ``ihc`` the sum of the stored credit of those sessions, ``ihc_revenue`` the sum
of credit x the conversion's revenue. Cost and attribution are aggregated separately and then
joined on (channel, date): joining all four tables at once would count a session's cost once
per journey it belongs to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ihc_attribution.db import Database

# Report dates are staged as text; PostgreSQL compares them with DATE columns only once cast
# (to the type of the column compared with: DATE, or TEXT where the source stores text).
_REPORT_DATES = "SELECT {report_date} FROM attribution_stg_report_dates WHERE run_id = ?"
_REPORT_DATE_EXPR = {"sqlite": "report_date", "postgresql": "CAST(report_date AS DATE)"}

# Three parts, each read the cheapest way (see the indexes in sql/package_schema.sql):
# - cells: every (channel, date) with a session, from the (event_date, channel_name) index alone;
# - spend: only costs that change a sum (NULL, missing and 0 add nothing), read in session_id
#   order and matched to their session in the same order, so both sides are read sequentially
#   instead of one random lookup per session;
#   A session row or cost row present twice (a source table without its primary key) is the
#   same session and the same cost: DISTINCT counts it once.
# - credit: driven by the attribution rows (about 1% of the sessions), not by the sessions.
#   Revenue is looked up per attribution row, so a conversion id present twice in the source
#   (which the extraction quarantines) cannot count its credit twice.
# CROSS JOIN fixes the join order on SQLite; other databases treat it as an inner join.
_REPORT_SQL = f"""
INSERT INTO channel_reporting (channel_name, date, cost, ihc, ihc_revenue)
WITH cells AS (
    SELECT DISTINCT s.channel_name, s.event_date AS date
    FROM session_sources s
    WHERE s.event_date IN ({_REPORT_DATES}) AND s.channel_name IS NOT NULL
),
spend AS (
    SELECT channel_name, date, SUM(cost) AS cost
    FROM (
        SELECT DISTINCT c.session_id, c.cost, s.channel_name, s.event_date AS date
        FROM session_costs c
        CROSS JOIN session_sources s
        WHERE c.cost <> 0 AND s.session_id = c.session_id
          AND s.event_date IN ({_REPORT_DATES}) AND s.channel_name IS NOT NULL
    ) AS session_spend
    GROUP BY channel_name, date
),
credit AS (
    SELECT s.channel_name, s.event_date AS date,
           SUM(a.ihc) AS ihc,
           SUM(a.ihc * (SELECT MIN(v.revenue) FROM conversions v WHERE v.conv_id = a.conv_id)) AS ihc_revenue
    FROM attribution_customer_journey a
    CROSS JOIN session_sources s
    WHERE s.session_id = a.session_id
      AND s.event_date IN ({_REPORT_DATES}) AND s.channel_name IS NOT NULL
    GROUP BY s.channel_name, s.event_date
)
SELECT cells.channel_name, {{out_date}}, COALESCE(spend.cost, 0),
       COALESCE(credit.ihc, 0), COALESCE(credit.ihc_revenue, 0)
FROM cells
LEFT JOIN spend ON spend.channel_name = cells.channel_name AND spend.date = cells.date
LEFT JOIN credit ON credit.channel_name = cells.channel_name AND credit.date = cells.date
"""


def report_sql(dialect: str, *, report_date: str | None = None, out_date: str = "cells.date") -> str:
    """The statement that inserts the report rows of the run's dates (every ``?`` is the run id).

    ``report_date`` is the staged date as compared with ``session_sources.event_date`` and
    ``out_date`` the session date as stored in ``channel_reporting.date`` (casts on PostgreSQL
    where the two tables' date types differ, see :meth:`Database.as_type_of`).
    """
    return _REPORT_SQL.format(report_date=report_date or _REPORT_DATE_EXPR[dialect], out_date=out_date)


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

    Every (channel, date) with at least one session gets a row, so days without attributed
    conversions still show their spend. Each rebuilt date is recorded in
    ``attribution_report_builds`` with the run and the look-back it was built with.
    """
    with db.transaction():
        n_dates = int(db.scalar("SELECT COUNT(*) FROM attribution_stg_report_dates WHERE run_id = ?", (run_id,)))
        dates = _REPORT_DATES.format(report_date=db.as_type_of("report_date", "channel_reporting", "date"))
        db.execute(f"DELETE FROM channel_reporting WHERE date IN ({dates})", (run_id,))
        sql = report_sql(
            db.dialect,
            report_date=db.as_type_of("report_date", "session_sources", "event_date"),
            out_date=db.as_type_of("cells.date", "channel_reporting", "date"),
        )
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
