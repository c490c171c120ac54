"""Stage 6: rebuild ``channel_reporting`` for every date the run touched.

Per (channel, session date): ``cost`` sums the costs of all sessions (NULL counts 0), ``ihc`` their
stored credit, ``ihc_revenue`` credit x the conversion's revenue. Spend (``attribution_spend``, see
:mod:`spend`) and credit (``attribution_credit``) are aggregated apart and put together per (channel,
date): a join of the four source tables would count a session's cost once per journey it belongs to.
Both are exact integers (micro-euros); a row holds them rounded half away from zero to the cent and to
4 decimals, so every sum of report rows, in any order, on any path, gives the same digits.
"""

from __future__ import annotations

from ihc_attribution import spend
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import Database

_REPORT_DATES = "SELECT report_date FROM attribution_stg_report_dates WHERE run_id = ?"
# Every date the package holds spend or credit for (what refresh_spend rebuilds).
_ALL_DATES = f"SELECT date FROM {spend.SPEND_DATES} UNION SELECT date FROM attribution_credit"


def report_sql(db: Database, out_date: str = "cells.date") -> str:
    """The statement that inserts the report rows of the run's dates (every ``?`` is the run id)."""
    cost = db.round_div("SUM(cost_micros)", 10_000)
    revenue = db.round_div("SUM(ihc_revenue_micros)", 10_000)
    return f"""
INSERT INTO channel_reporting (channel_name, date, cost, ihc, ihc_revenue)
SELECT cells.channel_name, {out_date}, cells.cost_cents / 100.0, cells.ihc_e4 / 10000.0, cells.revenue_cents / 100.0
FROM (
    SELECT channel_name, date, {cost} AS cost_cents, SUM(ihc_e4) AS ihc_e4, {revenue} AS revenue_cents
    FROM (
        SELECT channel_name, date, cost_micros, 0 AS ihc_e4, 0 AS ihc_revenue_micros FROM {spend.SPEND}
        WHERE date IN ({_REPORT_DATES}) AND channel_name IS NOT NULL
        UNION ALL
        SELECT channel_name, date, 0, ihc_e4, ihc_revenue_micros FROM attribution_credit
        WHERE date IN ({_REPORT_DATES})
    ) AS parts
    GROUP BY channel_name, date
) AS cells
"""


def build_report(
    db: Database,
    run_id: str,
    run_range: RunRange,
    *,
    lookback_days: int | None = None,
    triggered_at: str | None = None,
    built_at: str = "",
    refresh_spend: bool = False,
) -> dict[str, int]:
    """Replace the ``channel_reporting`` rows of the run's report dates, in one transaction; return counts.

    The report dates are those the run's load recorded. The spend of the run's own dates is read
    from the sources again, and that of any report date never read before; a run that
    re-attributed changed days reads all its report dates; ``refresh_spend`` reads every date the
    package holds spend or credit for again, and rebuilds them all. The spend is read before the
    transaction, which then only publishes it and the rows. Every (channel, date) with at least
    one session gets a row, so days without attributed conversions still show their spend. Each
    rebuilt date is recorded in ``attribution_report_builds``.
    """
    first, last = run_range.first_date.isoformat(), run_range.last_date.isoformat()
    if refresh_spend:
        to_read, params = f"{_REPORT_DATES} UNION {_ALL_DATES}", (run_id,)
    else:
        # A run that re-attributed changed days reads all its report dates: the sessions of the
        # dates those journeys credited before or credit now may have moved, gone or changed channel.
        to_read = (f"{_REPORT_DATES} AND (report_date BETWEEN ? AND ? "
                   "OR EXISTS (SELECT 1 FROM attribution_stg_extra_days WHERE run_id = ?) "
                   f"OR report_date NOT IN (SELECT date FROM {spend.SPEND_DATES}))")
        params = (run_id, first, last, run_id)
    try:
        figures = spend.read(db, to_read, params)
        with db.transaction():
            if refresh_spend:
                db.execute(
                    "INSERT INTO attribution_stg_report_dates (run_id, report_date) SELECT ?, d.date FROM "
                    f"({_ALL_DATES}) AS d WHERE 1 = 1 ON CONFLICT (run_id, report_date) DO NOTHING",
                    (run_id,),
                )
            read = spend.publish(db, run_id, figures)
            n_dates = int(db.scalar("SELECT COUNT(*) FROM attribution_stg_report_dates WHERE run_id = ?", (run_id,)))
            report_date = db.as_type_of("report_date", "channel_reporting", "date")
            dates = f"SELECT {report_date} FROM attribution_stg_report_dates WHERE run_id = ?"
            db.execute(f"DELETE FROM channel_reporting WHERE date IN ({dates})", (run_id,))
            sql = report_sql(db, db.as_type_of("cells.date", "channel_reporting", "date"))
            rows = db.execute(sql, (run_id,) * sql.count("?"))
            db.execute(f"DELETE FROM attribution_report_builds WHERE report_date IN ({_REPORT_DATES})", (run_id,))
            db.execute(
                "INSERT INTO attribution_report_builds (report_date, run_id, lookback_days, triggered_at, built_at) "
                "SELECT report_date, run_id, ?, ?, ? FROM attribution_stg_report_dates WHERE run_id = ?",
                (lookback_days, triggered_at, built_at, run_id),
            )
    except BaseException:
        db.abandon_reads()
        raise
    finally:
        spend.drop(db)
    return {"dates": n_dates, "rows": rows, "spend_dates_read": read}
