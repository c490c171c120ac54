"""The run's conversions, staged: those of its range ready to attribute, the others quarantined with a reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ihc_attribution import sources, validation
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import Database, pg_text_not_a_date, storable
from ihc_attribution.schema import CONVERSIONS, has_unique_key
from ihc_attribution.validation import DUPLICATE, INVALID_INPUT, UNPLACEABLE

if TYPE_CHECKING:
    from ihc_attribution.journeys import ExtractSummary

_LENIENT_DATE_RE = r"^\s*([0-9]{4})[-/.]([0-9]{2})[-/.]([0-9]{2})"

# Conversions whose date is in the run's days by text comparison, plus (on SQLite, where a DATE
# column holds any text) every conversion whose date is not a real YYYY-MM-DD date, so that a
# malformed date cannot hide from validation. date(x, '+0 days') gives NULL for text SQLite
# cannot read and moves impossible days (2023-09-31) to real ones, so it differs from x then.
_CANDIDATES_SQL = """
SELECT conv_id, user_id, CAST(conv_date AS TEXT), CAST(conv_time AS TEXT), revenue,
       CASE WHEN conv_date >= ? AND conv_date <= ? THEN 1 ELSE 0 END AS by_date
FROM {conversions}
WHERE ((conv_date >= ? AND conv_date <= ?) OR {malformed}) AND NOT {clean}
"""
# The clean candidates (see validation.CLEAN_CONVERSION), staged as ready without passing through Python.
_CLEAN_CONVERSIONS_SQL = """
INSERT INTO attribution_stg_conversions (run_id, conv_id, user_id, conv_date, conv_time, revenue, status)
SELECT ?, conv_id, user_id, conv_date, conv_time, CAST(revenue AS REAL), 'ready'
FROM {conversions}
WHERE conv_date >= ? AND conv_date <= ? AND {clean}
  AND conv_date || ' ' || conv_time >= ? AND conv_date || ' ' || conv_time < ?
"""
_SQLITE_MALFORMED_DATE = "conv_date IS NULL OR typeof(conv_date) <> 'text' OR date(conv_date, '+0 days') IS NOT conv_date"
# Conversion ids present more than once (a source table without its primary key): which row is
# the order, and with which revenue, cannot be known.
_DUPLICATE_CONVERSIONS_SQL = "SELECT conv_id, COUNT(*) FROM {conversions} GROUP BY conv_id HAVING COUNT(*) > 1"


def stage_conversions(db: Database, run_id: str, run_range: RunRange, summary: ExtractSummary) -> None:
    first, last = run_range.first_date.isoformat(), run_range.last_date.isoformat()
    source = sources.relation(db, CONVERSIONS)
    malformed = _SQLITE_MALFORMED_DATE if db.is_sqlite else "conv_date IS NULL"
    if not db.is_sqlite and sources.is_text_column(db, CONVERSIONS, "conv_date"):
        malformed = pg_text_not_a_date("conv_date")  # a DATE column cannot hold a malformed value; a text one can
    # A primary key (or unique index) on conv_id means no id is present twice: no count needed.
    counts = {} if has_unique_key(db, CONVERSIONS, "conv_id") else _conversion_id_counts(db)
    clean = validation.CLEAN_CONVERSION.get(db.dialect)
    if clean and not counts:
        # A clean candidate is a valid conversion of the run's days, so it is ready: staged in
        # the database, and only the others are read into Python to be checked.
        summary.conversions = db.execute(
            _CLEAN_CONVERSIONS_SQL.format(clean=clean, conversions=source),
            (run_id, first, last, run_range.start_ts, run_range.end_ts),
        )
    else:
        clean = "FALSE"
    rows = db.query(_CANDIDATES_SQL.format(malformed=malformed, clean=clean, conversions=source), (first, last, first, last))
    frame = pd.DataFrame(
        rows, columns=["conv_id", "user_id", "conv_date", "conv_time", "revenue", "by_date"], dtype=object
    )
    if frame.empty:
        return
    # A conversion without an id is recorded under a name that says so and where it is.
    missing_id = frame["conv_id"].isna() | frame["conv_id"].astype(str).str.strip().eq("")
    frame.loc[missing_id, "conv_id"] = [
        f"(no conv_id #{n}: user {r.user_id} at {r.conv_date} {r.conv_time})"
        for n, r in enumerate(frame[missing_id].itertuples(), start=1)
    ]
    frame["conv_id"] = frame["conv_id"].astype(str).map(storable)
    problems = validation.conversion_problems(frame)
    problems[missing_id] = problems[missing_id].map(lambda p: f"conv_id is empty, {p}" if p else "conv_id is empty")
    valid = problems.eq("")
    ts = frame["conv_date"].astype(str) + " " + frame["conv_time"].astype(str)
    in_range = valid & ts.ge(run_range.start_ts) & ts.lt(run_range.end_ts)

    # An invalid conversion belongs to this run when its date, read leniently (the leading
    # year, month and day of the text, so that '2024-03-05T10:00:00Z' and '2024/03/05' belong
    # to 2024-03-05; no timezone is read, so one odd row cannot fail the run), is in the
    # run's days; one whose date cannot be read at all belongs to no run and every run reports it.
    parts = frame["conv_date"].map(lambda v: v if isinstance(v, str) else None).str.extract(_LENIENT_DATE_RE)
    lenient = pd.to_datetime(parts[0] + "-" + parts[1] + "-" + parts[2], format="%Y-%m-%d", errors="coerce")
    lenient_in_range = lenient.between(pd.Timestamp(run_range.first_date), pd.Timestamp(run_range.last_date))
    by_date = frame["by_date"].astype(int).eq(1)
    invalid_here = ~valid & (by_date | lenient_in_range)
    unplaceable = ~valid & ~invalid_here & lenient.isna()

    wanted = set(frame["conv_id"][in_range | invalid_here])
    duplicates = {conv_id: n for conv_id, n in counts.items() if conv_id in wanted}
    duplicated = frame["conv_id"].isin(duplicates) & (in_range | invalid_here)
    ready = frame[in_range & ~duplicated]
    invalid = frame[invalid_here & ~duplicated]
    staged = [
        (run_id, r.conv_id, r.user_id, r.conv_date, r.conv_time, None if r.revenue is None else float(r.revenue), "ready")
        for r in ready.itertuples(index=False)
    ] + [
        (run_id, r.conv_id, *(None if v is None else storable(str(v)) for v in (r.user_id, r.conv_date, r.conv_time)),
         None, INVALID_INPUT)
        for r in invalid.itertuples(index=False)
    ] + [
        (run_id, conv_id, None, None, None, None, DUPLICATE) for conv_id in sorted(duplicates)
    ]
    db.executemany(
        "INSERT INTO attribution_stg_conversions "
        "(run_id, conv_id, user_id, conv_date, conv_time, revenue, status) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id, conv_id) DO NOTHING",  # an id present twice, on two days the run handles
        staged,
    )
    issues = [(run_id, cid, INVALID_INPUT, f"conversion: {p}") for cid, p in zip(invalid["conv_id"], problems[invalid.index])]
    issues += [
        (run_id, cid, UNPLACEABLE, f"conversion: {p}; it cannot be placed in any run's range")
        for cid, p in zip(frame.loc[unplaceable, "conv_id"], problems[unplaceable])
    ]
    issues += [
        (run_id, conv_id, DUPLICATE, f"conv_id is present {n} times in conversions; which row is the order is unknown")
        for conv_id, n in sorted(duplicates.items())
    ]
    insert_issues(db, issues)
    summary.conversions += len(ready) + len(invalid) + len(duplicates)
    summary.invalid_input = len(invalid)
    summary.duplicates = len(duplicates)
    summary.unplaceable = int(unplaceable.sum())


def _conversion_id_counts(db: Database) -> dict[str, int]:
    """The conversion ids present more than once in ``conversions``, with their counts."""
    return {storable(str(conv_id)): int(n) for conv_id, n in db.query(
        _DUPLICATE_CONVERSIONS_SQL.format(conversions=sources.relation(db, CONVERSIONS))) if conv_id is not None}


def insert_issues(db: Database, issues: list[tuple[str, str, str, str]]) -> None:
    """Record quarantined conversions in the run's staged issues (a repeated one is kept once)."""
    if issues:
        db.executemany(
            "INSERT INTO attribution_stg_issues (run_id, conv_id, reason, detail) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (run_id, conv_id, reason) DO NOTHING",
            issues,
        )

