"""The rules that tell a well-formed conversion or session from a malformed one, and the reasons recorded.

:func:`conversion_problems` and :func:`session_problems` check rows in pandas and say what is wrong.
Checking every row in Python cost more than the pass over ``session_sources`` itself, so on SQLite
:data:`CLEAN_SESSION` and :data:`CLEAN_CONVERSION` mark the rows the database can tell are
well-formed, and only the others are read and checked. Clean is stricter than the pandas checks,
never looser (``tests/ihc_attribution/test_journeys_clean.py`` checks this on generated values).
"""

from __future__ import annotations

import pandas as pd

from ihc_attribution.db import is_valid_text

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

