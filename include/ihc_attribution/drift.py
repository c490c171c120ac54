"""Attributed journeys that no longer match the sources: found cheaply at every run, named by their day.

``attribution_journeys`` holds what each attributed journey was (user, time, revenue, look-back
window, number of sessions) and ``attribution_credit`` each session it credited. At every run
:func:`detect` compares each stored conversion with ``conversions`` (a changed user, time or
revenue, or an id now present twice) and each stored journey with the extraction's copy of its
user's sessions (as many in its window, each credited one still there with its date, time and
channel). What changed is recorded in ``attribution_drift`` under the conversion's day; a run with
``reattribute_drift`` handles those days too. Not seen: a change of a session's engagement flags
alone, and a session whose date is malformed text that sorts after the conversion.
"""

from __future__ import annotations

from ihc_attribution import sources
from ihc_attribution.buyers import BUYER_SESSIONS
from ihc_attribution.daterange import RunRange
from ihc_attribution.db import BYTE_ORDER, Database
from ihc_attribution.sources import CONVERSIONS

DRIFT = "attribution_drift"
JOURNEYS = "attribution_journeys"
#: What the run's detection found, before it is published with the run's staging.
FOUND = "attribution_tmp_drift"

# Stored conversions against the sources: a changed user, time or revenue, or an id present twice.
_CONVERSIONS_SQL = """
SELECT j.conv_id, j.conv_date, COUNT(*),
       MAX(CASE WHEN {user} IS NULL OR {user} <> j.user_id THEN 1 ELSE 0 END),
       MAX(CASE WHEN {ts} IS NULL OR {ts} <> j.conv_ts THEN 1 ELSE 0 END),
       MAX(CASE WHEN {revenue} IS NULL OR {revenue} <> j.revenue_micros THEN 1 ELSE 0 END),
       MIN({ts})
FROM attribution_journeys j
JOIN {conversions} v ON {conv_id} = j.conv_id
GROUP BY j.conv_id, j.conv_date, j.user_id, j.conv_ts, j.revenue_micros
"""
# Stored journeys against the copy of their users' sessions. now: the sessions in the window
# (one without a timestamp counts: a journey holding it is quarantined); kept: the credited ones
# still there unchanged; from_first: those from the earliest one sent on (not sent when a session
# now ranks among the latest sent of a truncated journey), ties broken in byte order as the cut's.
_SESSIONS_SQL = """
SELECT conv_id, conv_date, sessions, sent, now, kept FROM (
    SELECT j.conv_id, j.conv_date, j.sessions, j.sent, COUNT(s.user_id) AS now, COUNT(cr.session_id) AS kept,
           COALESCE(SUM(CASE WHEN {ts} > j.first_ts OR ({ts} = j.first_ts AND s.session_id{byte_order} >= j.first_session_id)
                        THEN 1 ELSE 0 END), 0) AS from_first
    FROM attribution_journeys j
    LEFT JOIN {copy} s ON s.user_id = j.user_id
         AND ({ts} IS NULL OR ({ts} < j.conv_ts AND (j.since_ts IS NULL OR {ts} >= j.since_ts)))
    LEFT JOIN attribution_credit cr ON cr.conv_id = j.conv_id AND cr.session_id = s.session_id
         AND cr.session_ts = {ts} AND cr.channel_name = s.channel_name
    GROUP BY j.conv_id, j.conv_date, j.sessions, j.sent
) AS compared
WHERE now <> sessions OR kept <> sent OR from_first <> sent
"""
# The copy's timestamp as text, as the package's tables hold it.
_COPY_TS = {"sqlite": "s.event_date || ' ' || s.event_time",
            "postgresql": "CAST(s.event_date AS TEXT) || ' ' || CAST(s.event_time AS TEXT)"}


def _conversion_detail(copies: int, user: int, moved: int, revenue: int, now_ts: object) -> str:
    if copies > 1:
        return f"the conversion is now present {copies} times in conversions"
    changed = [what for what, flag in (("its user_id", user), (f"its time (now {now_ts})", moved),
                                       ("its revenue", revenue)) if flag]
    return "the conversion changed in the sources: " + ", ".join(changed)


def _journey_detail(sessions: int, sent: int, now: int, kept: int) -> str:
    if now != sessions:
        return f"attributed over {sessions} sessions; the sources now hold {now} before the conversion"
    if kept != sent:
        return f"{sent - kept} of the {sent} sessions it credited changed (date, time, channel or user) or are gone"
    return f"another session now ranks among the latest {sent} sent of its truncated journey"


def detect(db: Database) -> int:
    """Compare every attributed journey with the sources and the copy of the buyers' sessions (see
    :mod:`buyers`); keep what changed in the temporary :data:`FOUND`, and return how many changed."""
    drop(db)
    db.execute(f"CREATE TEMP TABLE {FOUND} (conv_id TEXT PRIMARY KEY, conv_date TEXT, detail TEXT)")
    found: dict[str, tuple] = {}
    for conv_id, conv_date, copies, user, moved, revenue, now_ts in db.query(_conversions_sql(db)):
        if copies > 1 or user or moved or revenue:
            found[conv_id] = (conv_date, _conversion_detail(int(copies), user, moved, revenue, now_ts))
    for conv_id, conv_date, sessions, sent, now, kept in db.query(
        _SESSIONS_SQL.format(copy=BUYER_SESSIONS, byte_order=BYTE_ORDER[db.dialect], ts=_COPY_TS[db.dialect])
    ):
        found.setdefault(conv_id, (conv_date, _journey_detail(sessions, sent, now, kept)))
    db.executemany(f"INSERT INTO {FOUND} (conv_id, conv_date, detail) VALUES (?, ?, ?)",
                   [(conv_id, *rest) for conv_id, rest in found.items()])
    return len(found)


def _conversions_sql(db: Database) -> str:
    """:data:`_CONVERSIONS_SQL` with the source's values as the staging reads them."""
    if db.is_sqlite:
        # conv_id compared as stored (an INTEGER id matches its text), so the key can be used.
        conv_id, user, revenue = "v.conv_id", "CAST(v.user_id AS TEXT)", db.units("CAST(v.revenue AS REAL)", 6)
    else:  # revenue as its text, as the driver reads it into a float (REAL and NUMERIC included)
        conv_id, user, revenue = "CAST(v.conv_id AS TEXT)", "CAST(v.user_id AS TEXT)", db.units("CAST(v.revenue AS TEXT)", 6)
        if sources.is_text_column(db, CONVERSIONS, "revenue"):  # text is never a valid revenue: nothing to compare
            revenue = "CAST(NULL AS BIGINT)"
    ts = "CAST(v.conv_date AS TEXT) || ' ' || CAST(v.conv_time AS TEXT)"
    return _CONVERSIONS_SQL.format(conv_id=conv_id, user=user, ts=ts, revenue=revenue,
                                   conversions=sources.table(db, CONVERSIONS))


def days_to_reattribute(db: Database, run_range: RunRange) -> list[str]:
    """The days :func:`detect` found changed journeys on, besides the run's own days, oldest first."""
    first, last = run_range.first_date.isoformat(), run_range.last_date.isoformat()
    return [str(d) for (d,) in db.query(
        f"SELECT DISTINCT conv_date FROM {FOUND} WHERE conv_date IS NOT NULL AND (conv_date < ? OR conv_date > ?) "
        "ORDER BY 1", (first, last))]


def record(db: Database, run_id: str) -> int:
    """Replace ``attribution_drift`` with what the run found; return how many the run does not handle itself."""
    db.execute(f"DELETE FROM {DRIFT}")
    db.execute(f"INSERT INTO {DRIFT} (conv_id, conv_date, run_id, detail) SELECT conv_id, conv_date, ?, detail FROM {FOUND}",
               (run_id,))
    return int(db.scalar(
        f"SELECT COUNT(*) FROM {FOUND} WHERE conv_id NOT IN "
        "(SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?)", (run_id,)))


def drop(db: Database) -> None:
    db.execute(f"DROP TABLE IF EXISTS {FOUND}")


def forget(db: Database, run_id: str) -> None:
    """Remove the records of the conversions the run has just published again, and of those no longer attributed."""
    db.execute(
        f"DELETE FROM {DRIFT} WHERE conv_id IN (SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?) "
        f"OR conv_id NOT IN (SELECT conv_id FROM {JOURNEYS})",
        (run_id,),
    )


def changed_days(db: Database) -> list[str]:
    """The conversion days whose attributed journeys no longer match the sources, oldest first."""
    return [str(d) for (d,) in db.query(f"SELECT DISTINCT conv_date FROM {DRIFT} WHERE conv_date IS NOT NULL ORDER BY 1")]
