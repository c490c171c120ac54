"""Source data for the source-schema tests, and the tables they compare.

One small random data set (a few hundred sessions) with what makes schemas matter: sessions of a
user tied at the same second (broken by the session id, whose byte order differs from a
language's collation: ``B7`` before ``a8``, ``a-9`` before ``a_9``), conversions at the very
second of a session, sessions before the range, missing and NULL costs. Each test loads it in
another shape and compares the run's tables with the run over the challenge schema.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

RANGE = {"start_date": "2024-01-02", "end_date": "2024-01-05"}
CHANNELS = ("Direct Traffic", "Paid Search Brand", "FB & IG Ads", "Organic Traffic", "email")
# Prefixes whose byte order and a language's order disagree (case, punctuation).
_PREFIXES = ("a", "B", "a-", "a_", "Z", "b")
_TIMES = ("00:00:00", "08:15:00", "12:00:00", "12:00:01", "23:59:59")


def source_rows(seed: int = 7, users: int = 70, *, int_ids: bool = False) -> tuple[list, list, list]:
    """(sessions, conversions, costs) rows of the challenge's columns, ids as text or as integers."""
    rnd = random.Random(seed)
    sessions, conversions, costs = [], [], []
    for u in range(users):
        user = 5000 + u if int_ids else f"{rnd.choice(_PREFIXES)}u{u}"
        stamps: list[tuple[str, str]] = []
        for _ in range(rnd.randint(1, 8)):
            n = len(sessions)
            sid = 90_000_000_000 + n if int_ids else f"{rnd.choice(_PREFIXES)}{n}"
            if stamps and rnd.random() < 0.35:
                stamp = rnd.choice(stamps)  # tied with another session of the user
            else:
                day = dt.date(2024, 1, 1) + dt.timedelta(days=rnd.randint(0, 5))
                stamp = (day.isoformat(), rnd.choice(_TIMES))
            stamps.append(stamp)
            sessions.append((sid, user, *stamp, rnd.choice(CHANNELS), rnd.randint(0, 1), rnd.randint(0, 1), rnd.randint(0, 1)))
            kind = rnd.random()
            if kind < 0.8:
                costs.append((sid, round(rnd.uniform(0, 40), 2)))
            elif kind < 0.9:
                costs.append((sid, None))
        for k in range(rnd.choice([0, 1, 1, 2])):
            stamp = rnd.choice(stamps) if rnd.random() < 0.3 else (
                (dt.date(2024, 1, 2) + dt.timedelta(days=rnd.randint(0, 3))).isoformat(), rnd.choice(_TIMES))
            cid = 70_000 + 10 * u + k if int_ids else f"{rnd.choice(_PREFIXES)}c{u}_{k}"
            conversions.append((cid, user, *stamp, round(rnd.uniform(1, 500), 2)))
    return sessions, conversions, costs


def utc_text(date: str, time: str, offset_hours: int) -> str:
    """The UTC timestamp ``date time`` as local time at ``offset_hours``, ISO 8601 with its offset."""
    local = dt.datetime.fromisoformat(f"{date} {time}") + dt.timedelta(hours=offset_hours)
    return local.isoformat() + f"{offset_hours:+03d}:00"


def result_tables(query: Callable[[str], list]) -> dict[str, list]:
    """The tables a schema must not change, each sorted in Python (byte order, not the database's collation)."""
    return {
        "attribution_customer_journey": sorted(
            tuple(r) for r in query("SELECT conv_id, session_id, ihc FROM attribution_customer_journey")),
        "attribution_issues": sorted(tuple(r) for r in query("SELECT conv_id, reason, detail FROM attribution_issues")),
        "channel_reporting": sorted(
            tuple(r) for r in query("SELECT channel_name, CAST(date AS TEXT), cost, ihc, ihc_revenue FROM channel_reporting")),
        # each session's credit under the rule-based models: first and last touch break ties by the id
        "attribution_credit": sorted(tuple(r) for r in query(
            "SELECT conv_id, session_id, first_touch_e4, last_touch_e4, linear_e4, position_e4 FROM attribution_credit")),
        # each journey's fingerprint (its sessions in order), which decides whether an answer is reused
        "journey fingerprints": sorted(tuple(r) for r in query("SELECT conv_id, journey_hash FROM attribution_stg_journey_keys")),
        # the session each journey's conversion flag marks: the latest, ties broken by the larger id
        "conversion flags": sorted(
            tuple(r) for r in query("SELECT conv_id, session_id FROM attribution_stg_sessions WHERE conversion = 1")),
    }


def payloads(client) -> list[list[tuple]]:
    """What a :class:`tests.helpers.FakeIhcClient` was sent: each request's rows, in the order sent."""
    return [[(r["conversion_id"], r["session_id"], r["conversion"]) for r in request.rows] for request in client.sent]


def csv_bytes(folder) -> bytes:
    """The one CSV the run exported to ``folder`` (rows by date and channel, in byte order)."""
    (found,) = list(folder.glob("channel_reporting_*.csv"))
    return found.read_bytes()


def issue_dates(conn) -> list[tuple]:
    """(conversion, its date) of every issue as the report pages read them through the sources (``conn``: DB-API)."""
    from ihc_attribution.report_ui.sources import ReportDb, read_issues

    view = read_issues(ReportDb(conn, "test"))
    assert view.error is None and view.total == len(view.latest)
    return sorted((issue.conv_id, issue.conv_date) for issue in view.latest)
