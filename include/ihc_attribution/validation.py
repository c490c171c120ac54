"""The rules that tell a well-formed conversion or session from a malformed one.

One rule set, written twice on purpose for speed: :func:`conversion_problems` and
:func:`session_problems` check rows in pandas and say what is wrong (the reasons quarantined
conversions carry); :data:`CLEAN_SESSION` and :data:`CLEAN_CONVERSION` are SQLite predicates
stricter than them, so rows SQLite can tell are well-formed skip the trip into Python.
``tests/ihc_attribution/test_journeys_clean.py`` checks on generated values that every row the
predicates call clean passes the pandas checks.
"""

from __future__ import annotations

import pandas as pd

from ihc_attribution.db import is_valid_text, storable

# Reasons recorded in attribution_issues.
NO_SESSIONS = "no_sessions"
INVALID_INPUT = "invalid_input"
DUPLICATE = "duplicate_conversion"
UNPLACEABLE = "unplaceable_conversion"
OVERSIZED = "oversized_journey"
API_REJECTED = "api_rejected"

#: The largest amount of money taken, in either direction: credit (1/10,000 of an order) times the
#: revenue in micro-euros must fit a 64-bit integer: 922,337,203 euros at most. A revenue beyond it, or
#: not finite, quarantines its conversion; such a cost is left out of the spend and counted
#: (``unusable_costs``), so that no sum overflows or turns into ``inf``.
MAX_MONEY = (2**63 - 1) // 10**10

# ASCII digits only: \d also matches other scripts' digits (full-width ２０２４ among them).
_DATE_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME_RE = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"

# --- rows the database can tell are well-formed -------------------------------------------------
#
# Checking every copied session and every candidate conversion in Python cost more than the pass
# over session_sources itself, most of it in moving the values into Python. So SQLite marks the
# rows it can tell are well-formed ("clean") and only the others are read and checked in Python
# (session_problems, conversion_problems), which alone decide. Clean is stricter than those
# checks, never looser: every clean row passes them (tests/ihc_attribution/test_journeys_clean.py
# checks this on generated values). Text is clean when it is printable ASCII (so valid UTF-8,
# and with no whitespace but the space that strip() would remove) with at least one character
# other than a space; length() stops at a NUL and the length of the blob does not, so a NUL
# (which GLOB does not look past) makes the two differ. A date is clean when it is the real
# YYYY-MM-DD date that date(x, '+0 days') gives back, from 1900 to 2199 (pandas reads the years
# 1677 to 2262 only). Only GLOB compares with text here: a DATE or TIME column has NUMERIC
# affinity, which turns a literal like '24' into a number. On PostgreSQL every row is checked in
# Python.
def _sqlite_clean_text(column: str) -> str:
    return (
        f"typeof({column}) = 'text' AND length({column}) = length(CAST({column} AS BLOB)) "
        f"AND {column} GLOB '*[!-~]*' AND NOT {column} GLOB '*[^ -~]*'"
    )


def _sqlite_clean_date(column: str) -> str:
    return (
        f"typeof({column}) = 'text' AND date({column}, '+0 days') IS {column} "
        f"AND ({column} GLOB '19*' OR {column} GLOB '2[01]*')"
    )


def _sqlite_clean_time(column: str) -> str:
    return (
        f"typeof({column}) = 'text' AND length(CAST({column} AS BLOB)) = 8 "
        f"AND ({column} GLOB '[01][0-9]:[0-5][0-9]:[0-5][0-9]' OR {column} GLOB '2[0-3]:[0-5][0-9]:[0-5][0-9]')"
    )


def _sqlite_clean_flag(column: str) -> str:
    return f"typeof({column}) IN ('integer', 'real') AND {column} IN (0, 1)"


def _all(*conditions: str) -> str:
    return "(" + " AND ".join(f"({c})" for c in conditions) + ")"


CLEAN_SESSION = {
    "sqlite": _all(
        _sqlite_clean_text("s.session_id"),
        _sqlite_clean_date("s.event_date"),
        _sqlite_clean_time("s.event_time"),
        _sqlite_clean_text("s.channel_name"),
        _sqlite_clean_flag("s.holder_engagement"),
        _sqlite_clean_flag("s.closer_engagement"),
        _sqlite_clean_flag("s.impression_interaction"),
    ),
    "postgresql": "FALSE",
}
CLEAN_CONVERSION = {
    "sqlite": _all(
        _sqlite_clean_text("conv_id"),
        _sqlite_clean_text("user_id"),
        _sqlite_clean_date("conv_date"),
        _sqlite_clean_time("conv_time"),
        f"typeof(revenue) IN ('integer', 'real') AND revenue >= 0 AND revenue <= {MAX_MONEY}",
    ),
}


# --- validation (vectorised: one pass per column over a batch) ---------------------------------


def valid_date(values: pd.Series) -> pd.Series:
    text = values.astype(str)
    shaped = values.map(lambda v: isinstance(v, str)) & text.str.fullmatch(_DATE_RE)
    parsed = pd.to_datetime(text.where(shaped, None), format="%Y-%m-%d", errors="coerce")
    return shaped & parsed.notna()


def valid_time(values: pd.Series) -> pd.Series:
    return values.map(lambda v: isinstance(v, str)) & values.astype(str).str.fullmatch(_TIME_RE)


def _valid_text(values: pd.Series) -> pd.Series:
    """False for text that was not valid UTF-8 in the database (see :func:`db.is_valid_text`)."""
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


def to_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def to_text(value: object) -> str | None:
    return None if value is None else storable(str(value))
