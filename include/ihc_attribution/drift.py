"""Journeys of other days that no longer match the sources: found cheaply, named by their day.

A late session, a deleted or re-dated session or a merged ``user_id`` changes the journeys of
conversions already attributed, on days no run is covering now. The extraction has just read
every session of the run's converting users; for the other attributed conversions of those same
users it compares the stored journey (sessions, first and last timestamp) with what the sources
hold now. A mismatch is recorded in ``attribution_drift`` with the conversion's day, and the run
summary names the days to re-run. A run that handles a conversion again removes its record.
Conversions of users without a conversion in the run are not looked at (that would read their
sessions too); a channel changed on a session is not seen (its count and times do not change).
"""

from __future__ import annotations

from ihc_attribution.db import Database

DRIFT = "attribution_drift"

_STORED = """
SELECT conv_id, conv_date, conv_ts, user_id, COUNT(*) AS n, MIN(session_ts) AS first_ts, MAX(session_ts) AS last_ts
FROM attribution_credit
WHERE user_id IN (SELECT user_id FROM {buyers})
  AND conv_id NOT IN (SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?)
  AND conv_id NOT IN (SELECT conv_id FROM attribution_issues WHERE reason = 'oversized_journey')
GROUP BY conv_id, conv_date, conv_ts, user_id
"""
_DETECT = """
INSERT INTO {drift} (conv_id, conv_date, run_id, detail)
SELECT st.conv_id, st.conv_date, ?,
       'attributed over ' || CAST(st.n AS TEXT) || ' sessions; the sources now hold '
       || CAST(COUNT(s.ts) AS TEXT) || ' before the conversion'
FROM ({stored}) AS st
LEFT JOIN (SELECT s.user_id, {ts} AS ts FROM {copy} s) AS s ON s.user_id = st.user_id AND s.ts < st.conv_ts
GROUP BY st.conv_id, st.conv_date, st.n, st.first_ts, st.last_ts
HAVING COUNT(s.ts) <> st.n OR COALESCE(MIN(s.ts), '') <> COALESCE(st.first_ts, '')
    OR COALESCE(MAX(s.ts), '') <> COALESCE(st.last_ts, '')
"""


def detect(db: Database, run_id: str, buyers: str, copy: str, ts: str) -> int:
    """Record the conversions of the run's users, not handled by the run, whose journey changed.

    ``buyers``/``copy``: the extraction's temporary tables of the run's users and their sessions;
    ``ts``: the copy's session timestamp as ``YYYY-MM-DD HH:MM:SS``. Returns the number recorded.
    """
    stored = _STORED.format(buyers=buyers)
    db.execute(f"DELETE FROM {DRIFT} WHERE conv_id IN (SELECT conv_id FROM ({stored}) AS st)", (run_id,))
    return db.execute(_DETECT.format(drift=DRIFT, stored=stored, ts=ts, copy=copy), (run_id, run_id))


def forget(db: Database, run_id: str) -> None:
    """Remove the records of the conversions the run has just published again."""
    db.execute(f"DELETE FROM {DRIFT} WHERE conv_id IN (SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?)",
               (run_id,))


def changed_days(db: Database) -> list[str]:
    """The conversion days whose attributed journeys no longer match the sources, oldest first."""
    return [str(d) for (d,) in db.query(f"SELECT DISTINCT conv_date FROM {DRIFT} WHERE conv_date IS NOT NULL ORDER BY 1")]
