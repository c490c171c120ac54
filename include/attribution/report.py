"""Stage 6: rebuild ``channel_reporting`` for every date the run touched.

Per (channel, session date): ``cost`` is the sum of the costs of all sessions (NULL or missing
cost counts 0), ``ihc`` the sum of the stored credit of those sessions, ``ihc_revenue`` the sum
of credit x the conversion's revenue. Cost and attribution are aggregated separately and then
joined on (channel, date): joining all four tables at once would count a session's cost once
per journey it belongs to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from include.attribution.db import Database

_REPORT_DATES = "SELECT report_date FROM attribution_stg_report_dates WHERE run_id = ?"

_REPORT_SQL = f"""
INSERT INTO channel_reporting (channel_name, date, cost, ihc, ihc_revenue)
WITH spend AS (
    SELECT s.channel_name, s.event_date AS date, SUM(COALESCE(c.cost, 0)) AS cost
    FROM session_sources s
    LEFT JOIN session_costs c ON c.session_id = s.session_id
    WHERE s.event_date IN ({_REPORT_DATES}) AND s.channel_name IS NOT NULL
    GROUP BY s.channel_name, s.event_date
),
credit AS (
    SELECT s.channel_name, s.event_date AS date,
           SUM(a.ihc) AS ihc, SUM(a.ihc * v.revenue) AS ihc_revenue
    FROM session_sources s
    JOIN attribution_customer_journey a ON a.session_id = s.session_id
    JOIN conversions v ON v.conv_id = a.conv_id
    WHERE s.event_date IN ({_REPORT_DATES}) AND s.channel_name IS NOT NULL
    GROUP BY s.channel_name, s.event_date
)
SELECT spend.channel_name, spend.date, spend.cost,
       COALESCE(credit.ihc, 0), COALESCE(credit.ihc_revenue, 0)
FROM spend
LEFT JOIN credit ON credit.channel_name = spend.channel_name AND credit.date = spend.date
"""


@dataclass
class ReportSummary:
    """Counts of the report stage."""

    dates: int = 0
    rows: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def build_report(db: Database, run_id: str) -> ReportSummary:
    """Replace the ``channel_reporting`` rows of the run's report dates, in one transaction.

    Every (channel, date) with at least one session gets a row, so days without attributed
    conversions still show their spend.
    """
    with db.transaction():
        dates = int(db.scalar("SELECT COUNT(*) FROM attribution_stg_report_dates WHERE run_id = ?", (run_id,)))
        db.execute(f"DELETE FROM channel_reporting WHERE date IN ({_REPORT_DATES})", (run_id,))
        rows = db.execute(_REPORT_SQL, (run_id, run_id))
    return ReportSummary(dates=dates, rows=rows)
