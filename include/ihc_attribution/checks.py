"""The final check of a run and its summary.

Every conversion of the run's range must end up attributed (rows summing to 1) or listed in
``attribution_issues`` with a reason. A run where this does not hold fails, so nothing is lost
silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal

from ihc_attribution import drift, export, sources
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import Database
from ihc_attribution.errors import PermanentError
from ihc_attribution.load import SUM_TOLERANCE


class CheckError(PermanentError, RuntimeError):
    """A conversion of the run is neither attributed nor recorded, or a journey is wrong."""


@dataclass
class RunSummary:
    """What a run did, for the log, XCom and the UI."""

    run_id: str
    range_start: str
    range_end: str
    conversions: int
    attributed: int
    issues_by_reason: dict[str, int]
    requests: int
    retries: int
    cost: Decimal
    ihc: Decimal
    ihc_revenue: Decimal
    source_warnings: dict[str, int]
    #: Conversion days of attributed journeys that no longer match the sources: re-run them.
    changed_days: list[str]
    #: Days besides the range whose conversions the run handled because their journeys had changed.
    reattributed_days: list[str]
    #: What the range covered, when that needs saying (no conversions, before the first one ...).
    note: str

    def as_dict(self) -> dict:
        """For XCom: the totals as the decimal strings the report shows (exact, JSON-safe)."""
        values = asdict(self)
        for key in ("cost", "ihc", "ihc_revenue"):
            values[key] = str(values[key])
        return values

    def render(self) -> str:
        """A few human-readable lines."""
        lines = [f"run {self.run_id}: conversions [{self.range_start}, {self.range_end})"]
        if self.note:
            lines.append(f"  NOTE: {self.note}")
        lines += [
            f"  conversions in range: {self.conversions}, attributed: {self.attributed}",
            f"  issues by reason: {_counts(self.issues_by_reason)}",
            f"  API requests: {self.requests}, retries: {self.retries}",
            f"  report totals over the range: cost {self.cost:.2f}, ihc {self.ihc:.4f}, ihc_revenue {self.ihc_revenue:.2f}",
            f"  source data warnings over the range: {_counts(self.source_warnings)}",
        ]
        if self.reattributed_days:
            lines.append(f"  re-attributed the conversions of {len(self.reattributed_days)} other days whose journeys had "
                         f"changed: {_days(self.reattributed_days)}")
        if self.changed_days:
            lines.append(f"  CHANGED: attributed journeys of {len(self.changed_days)} other days no longer match the sources; "
                         f"re-run them ({_days(self.changed_days)}): clear their runs in the UI, trigger a run with "
                         "start_date/end_date, or any run with reattribute_drift on")
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def _days(days: list[str], shown: int = 10) -> str:
    return ", ".join(days[:shown]) + (" ..." if len(days) > shown else "")


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

    conversions, attributed = (int(n) for n in db.query(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM attribution_customer_journey a "
        "WHERE a.conv_id = c.conv_id) THEN 1 ELSE 0 END), 0) FROM attribution_stg_conversions c WHERE c.run_id = ?",
        (run_id,),
    )[0])
    issues = db.query("SELECT reason, COUNT(*) FROM attribution_stg_issues WHERE run_id = ? GROUP BY reason", (run_id,))
    requests, attempts = db.query(
        "SELECT COUNT(*), COALESCE(SUM(attempts), 0) FROM attribution_stg_requests WHERE run_id = ?", (run_id,)
    )[0]
    totals = export.report_totals(export.read_report(db, run_range))
    summary = RunSummary(
        run_id, run_range.start_ts, run_range.end_ts, conversions, attributed,
        issues_by_reason={reason: int(n) for reason, n in issues},
        requests=int(requests), retries=max(int(attempts) - int(requests), 0),
        cost=totals.cost, ihc=totals.ihc, ihc_revenue=totals.ihc_revenue,
        source_warnings=source_warnings(db, run_range),
        changed_days=drift.changed_days(db),
        reattributed_days=[str(d) for (d,) in db.query(
            "SELECT day FROM attribution_stg_extra_days WHERE run_id = ? ORDER BY day", (run_id,))],
        note="" if conversions else coverage_note(db, run_range),
    )
    _record(db, summary)
    return summary


def coverage_note(db: Database, run_range: RunRange) -> str:
    """Why a range has no conversions, in words: before, after or between the data's conversions."""
    first, last = db.query(
        # Only date-shaped values: a malformed date ('0000-00-00', 'yesterday') says nothing of the data's span.
        f"SELECT MIN(conv_date), MAX(conv_date) FROM {sources.relation(db, sources.CONVERSIONS)} "
        "WHERE conv_date >= '1000-01-01' AND conv_date <= '9999-12-31'"
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
    with db.transaction():
        db.execute("DELETE FROM attribution_run_results WHERE run_id = ?", (summary.run_id,))
        db.execute(
            "INSERT INTO attribution_run_results (run_id, range_start, range_end, conversions, attributed, "
            "issues, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (summary.run_id, summary.range_start, summary.range_end, summary.conversions, summary.attributed,
             sum(summary.issues_by_reason.values()), summary.note or None),
        )


def source_warnings(db: Database, run_range: RunRange) -> dict[str, int]:
    """Counts of the range's source rows that the report treats specially.

    Sessions without a cost row and NULL costs count as cost 0; negative costs are summed as
    they are (credits, refunds); a cost that is not a number, infinite or beyond
    :data:`validation.MAX_MONEY` counts as 0 too (``unusable_costs``); a session without a
    channel is left out of ``channel_reporting`` (an empty one is reported under ""). A session
    id present twice in the range (a source without its key) is counted once in the spend, and a
    journey holding it is quarantined. Read from the spend the report stage has just read.
    """
    sums = {
        "duplicated_session_ids": "session_rows - sessions",
        "sessions_without_cost_row": "sessions - cost_rows",
        "null_costs": "null_costs",
        "negative_costs": "negative_costs",
        "unusable_costs": "unusable_costs",
        "sessions_without_channel": "CASE WHEN channel_name IS NULL OR channel_name = '' THEN session_rows ELSE 0 END",
    }
    found = db.query(
        "SELECT " + ", ".join(f"COALESCE(SUM({sql}), 0)" for sql in sums.values())
        + " FROM attribution_spend WHERE date >= ? AND date <= ?",
        (run_range.first_date.isoformat(), run_range.last_date.isoformat()),
    )[0]
    return {name: int(value) for name, value in zip(sums, found)}
