"""What makes a conversion or session malformed, the reasons recorded, and the run's conversions staged.

:func:`conversion_problems` and :func:`session_problems` check rows in pandas and say what is wrong.
Checking every row in Python cost more than the pass over ``session_sources`` itself, so on SQLite
:data:`CLEAN_SESSION` and :data:`CLEAN_CONVERSION` mark the rows the database can tell are
well-formed, and only the others are checked. Clean is stricter than the pandas checks, never
looser (``tests/ihc_attribution/test_journeys_clean.py``).
"""

from __future__ import annotations

import pandas as pd

from ihc_attribution import sources
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import Database, is_valid_text, pg_text_not_a_date, storable
from ihc_attribution.schema import CONVERSIONS, has_unique_key

# Reasons recorded in attribution_issues.
NO_SESSIONS = "no_sessions"
INVALID_INPUT = "invalid_input"
DUPLICATE = "duplicate_conversion"
UNPLACEABLE = "unplaceable_conversion"
OVERSIZED = "oversized_journey"
API_REJECTED = "api_rejected"

#: The largest amount of money taken: credit (1/10,000 of an order) times the revenue in micro-euros
#: must fit a 64-bit integer. A revenue beyond it, or not finite, quarantines its conversion; such a
#: cost is left out of the spend and counted (``unusable_costs``), so that no sum overflows.
MAX_MONEY = (2**63 - 1) // 10**10

# ASCII digits only: \d also matches other scripts' digits (full-width ２０２４ among them).
_DATE_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME_RE = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"

# Clean text is printable ASCII (so valid UTF-8, with no whitespace but the space strip() removes)
# with a character other than a space; length() stops at a NUL and the length of the blob does
# not, so a NUL (which GLOB does not look past) makes them differ. A clean date is the real
# YYYY-MM-DD date that date(x, '+0 days') gives back, from 1900 to 2199 (pandas reads the years
# 1677 to 2262 only). Only GLOB compares with text: a DATE or TIME column has NUMERIC affinity,
# which turns a literal like '24' into a number. On PostgreSQL every row is checked in Python.
_CLEAN_TEXT = ("typeof({c}) = 'text' AND length({c}) = length(CAST({c} AS BLOB)) "
               "AND {c} GLOB '*[!-~]*' AND NOT {c} GLOB '*[^ -~]*'")
_CLEAN_DATE = "typeof({c}) = 'text' AND date({c}, '+0 days') IS {c} AND ({c} GLOB '19*' OR {c} GLOB '2[01]*')"
_CLEAN_TIME = ("typeof({c}) = 'text' AND length(CAST({c} AS BLOB)) = 8 "
               "AND ({c} GLOB '[01][0-9]:[0-5][0-9]:[0-5][0-9]' OR {c} GLOB '2[0-3]:[0-5][0-9]:[0-5][0-9]')")
_CLEAN_FLAG = "typeof({c}) IN ('integer', 'real') AND {c} IN (0, 1)"


def _all(*checks: tuple[str, str]) -> str:
    return "(" + " AND ".join(f"({rule.format(c=column)})" for rule, column in checks) + ")"


CLEAN_SESSION = {
    "sqlite": _all(
        (_CLEAN_TEXT, "s.session_id"), (_CLEAN_DATE, "s.event_date"), (_CLEAN_TIME, "s.event_time"),
        (_CLEAN_TEXT, "s.channel_name"), (_CLEAN_FLAG, "s.holder_engagement"), (_CLEAN_FLAG, "s.closer_engagement"),
        (_CLEAN_FLAG, "s.impression_interaction"),
    ),
    "postgresql": "FALSE",
}
CLEAN_CONVERSION = {
    "sqlite": _all(
        (_CLEAN_TEXT, "conv_id"), (_CLEAN_TEXT, "user_id"), (_CLEAN_DATE, "conv_date"), (_CLEAN_TIME, "conv_time"),
        (f"typeof({{c}}) IN ('integer', 'real') AND {{c}} >= 0 AND {{c}} <= {MAX_MONEY}", "revenue"),
    ),
}


def valid_date(values: pd.Series) -> pd.Series:
    text = values.astype(str)
    shaped = values.map(lambda v: isinstance(v, str)) & text.str.fullmatch(_DATE_RE)
    parsed = pd.to_datetime(text.where(shaped, None), format="%Y-%m-%d", errors="coerce")
    return shaped & parsed.notna()


def valid_time(values: pd.Series) -> pd.Series:
    return values.map(lambda v: isinstance(v, str)) & values.astype(str).str.fullmatch(_TIME_RE)


def _valid_text(values: pd.Series) -> pd.Series:
    """False for text that was not valid UTF-8 in the database."""
    return values.map(lambda v: not isinstance(v, str) or is_valid_text(v))


def _valid_flag(values: pd.Series) -> pd.Series:
    return values.map(lambda v: not isinstance(v, (str, bytes)) and v in (0, 1))


def _collect(checks: list[tuple[pd.Series, str]], index: pd.Index) -> pd.Series:
    problems = pd.Series([""] * len(index), index=index, dtype=object)
    for ok, message in checks:
        bad = ~ok.astype(bool)
        problems[bad] = problems[bad].map(lambda p, m=message: f"{p}, {m}" if p else m)
    return problems


def conversion_problems(frame: pd.DataFrame) -> pd.Series:
    """For each conversion row, a description of what is malformed ("" when valid)."""
    revenue = pd.to_numeric(frame["revenue"].map(lambda v: None if isinstance(v, str) else v), errors="coerce")
    checks = [
        (valid_date(frame["conv_date"]), "conv_date is not a YYYY-MM-DD date"),
        (valid_time(frame["conv_time"]), "conv_time is not a HH:MM:SS time"),
        (frame["user_id"].notna() & frame["user_id"].astype(str).str.strip().ne(""), "user_id is empty"),
        (_valid_text(frame["conv_id"]) & _valid_text(frame["user_id"]), "an id is not valid UTF-8"),
        (revenue.notna() & revenue.ge(0), "revenue is missing, negative or not a number"),
        (~revenue.gt(MAX_MONEY), f"revenue is infinite or beyond {MAX_MONEY:,} (more than exact sums can hold)"),
    ]
    return _collect(checks, frame.index)


def session_problems(frame: pd.DataFrame) -> pd.Series:
    """For each session row, a description of what is malformed ("" when valid)."""
    channel = frame["channel_name"]
    session_id = frame["session_id"]
    checks = [
        (session_id.notna() & session_id.astype(str).str.strip().ne(""), "session_id is empty"),
        (_valid_text(session_id), "session_id is not valid UTF-8"),
        (_valid_text(channel), "channel_name is not valid UTF-8"),
        (valid_date(frame["event_date"]), "event_date is not a YYYY-MM-DD date"),
        (valid_time(frame["event_time"]), "event_time is not a HH:MM:SS time"),
        (channel.map(lambda v: isinstance(v, str)) & channel.astype(str).str.strip().ne(""), "channel_name is empty"),
        (_valid_flag(frame["holder_engagement"]), "holder_engagement is not 0 or 1"),
        (_valid_flag(frame["closer_engagement"]), "closer_engagement is not 0 or 1"),
        (_valid_flag(frame["impression_interaction"]), "impression_interaction is not 0 or 1"),
    ]
    return _collect(checks, frame.index)


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
# The clean candidates (see CLEAN_CONVERSION), staged as ready without passing through Python.
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


def stage_conversions(db: Database, run_id: str, run_range: RunRange) -> tuple[int, int, int, int]:
    """Stage the conversions of the run's days: (staged, invalid_input, duplicates, unplaceable) counted."""
    first, last = run_range.first_date.isoformat(), run_range.last_date.isoformat()
    source = sources.relation(db, CONVERSIONS)
    malformed = _SQLITE_MALFORMED_DATE if db.is_sqlite else "conv_date IS NULL"
    if not db.is_sqlite and sources.is_text_column(db, CONVERSIONS, "conv_date"):
        malformed = pg_text_not_a_date("conv_date")  # a DATE column cannot hold a malformed value; a text one can
    # A primary key (or unique index) on conv_id means no id is present twice: no count needed.
    counts = {} if has_unique_key(db, CONVERSIONS, "conv_id") else {
        storable(str(conv_id)): int(n)
        for conv_id, n in db.query(_DUPLICATE_CONVERSIONS_SQL.format(conversions=source)) if conv_id is not None
    }
    clean, staged_clean = CLEAN_CONVERSION.get(db.dialect), 0
    if clean and not counts:
        # A clean candidate is a valid conversion of the run's days, so it is ready: staged in
        # the database, and only the others are read into Python to be checked.
        staged_clean = db.execute(
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
        return staged_clean, 0, 0, 0
    # A conversion without an id is recorded under a name that says so and where it is.
    missing_id = frame["conv_id"].isna() | frame["conv_id"].astype(str).str.strip().eq("")
    frame.loc[missing_id, "conv_id"] = [
        f"(no conv_id #{n}: user {r.user_id} at {r.conv_date} {r.conv_time})"
        for n, r in enumerate(frame[missing_id].itertuples(), start=1)
    ]
    frame["conv_id"] = frame["conv_id"].astype(str).map(storable)
    problems = conversion_problems(frame)
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
    return staged_clean + len(ready) + len(invalid) + len(duplicates), len(invalid), len(duplicates), int(unplaceable.sum())


def insert_issues(db: Database, issues: list[tuple[str, str, str, str]]) -> None:
    """Record quarantined conversions in the run's staged issues (a repeated one is kept once)."""
    if issues:
        db.executemany(
            "INSERT INTO attribution_stg_issues (run_id, conv_id, reason, detail) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (run_id, conv_id, reason) DO NOTHING",
            issues,
        )

