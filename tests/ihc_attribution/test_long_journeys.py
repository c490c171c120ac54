"""A user with a long history: the extraction stages what can be sent, and the results do not change.

A journey longer than the API's ``max_sessions_per_request`` is sent cut to its latest sessions
(or not at all, per ``oversized_journey_policy``). The extraction keeps only those sessions of it,
so a user with 100,000 sessions and 30 conversions stages 30 x the limit rows instead of 2.5
million, while the journey's full length still decides and records the policy. The tables are
those of a run that stages every session.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from ihc_attribution import api_stage, journeys, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import FakeIhcClient, make_db, run_stages

LIMIT = 201  # odd: every cut falls between the two sessions of one timestamp
CHANNELS = ("Referral", "Paid Search Brand", "FB & IG Ads")
#: Conversions of the long-history user, the first at the very time of one of its sessions (equal is not before).
LONG_CONVERSIONS = [("c0", "u1", "2024-03-01", "09:00:00", 100.0)] + [
    (f"c{k}", "u1", f"2024-03-{k + 1:02d}", "13:02:30", 10.0 * k) for k in range(1, 6)
]


def long_history_db(path, sessions: int = 20_000):
    """User u1: ``sessions`` sessions two at a time every 10 minutes from 2024-01-01 (ties at every
    cut), six conversions in March; user u2: a short journey."""
    start = dt.datetime(2024, 1, 1)
    rows, costs = [], []
    for i in range(sessions):
        t = start + dt.timedelta(minutes=10 * (i // 2))
        rows.append((f"s{i:06d}", "u1", t.strftime("%Y-%m-%d"), t.strftime("%H:%M:%S"), CHANNELS[i % 3],
                     i % 2, (i // 3) % 2, (i // 5) % 2))
        if i % 4:
            costs.append((f"s{i:06d}", 0.01 * (i % 7)))
    rows += [("v1", "u2", "2024-03-02", "08:00:00", "Referral"), ("v2", "u2", "2024-03-02", "09:00:00", "FB & IG Ads")]
    return make_db(path, rows, LONG_CONVERSIONS + [("d1", "u2", "2024-03-02", "10:00:00", 5.0)], costs + [("v1", 1.5)])


_TABLES = {
    "attribution_customer_journey": "conv_id, session_id, ihc",
    "attribution_credit": "*",
    "attribution_issues": "conv_id, reason, detail",
    "channel_reporting": "*",
    "attribution_stg_conversions": "*",
    "attribution_stg_requests": "request_no, n_journeys, n_sessions, status",
}


def tables(db: Database) -> dict[str, list[tuple]]:
    return {table: [tuple(r) for r in db.query(f"SELECT {columns} FROM {table} ORDER BY 1, 2, 3")]
            for table, columns in _TABLES.items()}


def run_both_ways(db_of, policy: str, lookback_days: int | None):
    """The same run staging every session and cut to the limit: (summary, staged rows, sent rows, tables) each."""
    outcomes = []
    for cut in (False, True):
        db = db_of(cut)
        client = FakeIhcClient()
        summary = run_stages(db, "r1", "2024-03-01", "2024-03-10", client, max_sessions=LIMIT, policy=policy,
                             lookback_days=lookback_days, cut_journeys=cut)
        staged = db.scalar("SELECT COUNT(*) FROM attribution_stg_sessions WHERE run_id = 'r1'")
        outcomes.append((summary, staged, [r.rows for r in client.sent], tables(db)))
    return outcomes


@pytest.mark.parametrize("lookback_days", [None, 30])
@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_a_long_history_stages_at_most_the_limit_per_journey_and_gives_the_same_tables(tmp_path, policy, lookback_days):
    paths = {cut: long_history_db(tmp_path / f"cut-{cut}.sqlite") for cut in (False, True)}
    dbs = []

    def db_of(cut):
        dbs.append(Database.connect_sqlite(str(paths[cut])))
        return dbs[-1]

    try:
        (whole_summary, whole_staged, whole_sent, whole), (summary, staged, sent, cut) = run_both_ways(
            db_of, policy, lookback_days)
    finally:
        for db in dbs:
            db.close()
    assert staged <= (len(LONG_CONVERSIONS) + 1) * LIMIT < whole_staged
    assert [r[1] for r in cut["attribution_issues"]].count(journeys.OVERSIZED) == len(LONG_CONVERSIONS)
    assert sent == whole_sent
    assert cut == whole
    assert summary == whole_summary


def test_packing_refuses_journeys_extracted_for_a_lower_limit(tmp_path):
    path = long_history_db(tmp_path / "db.sqlite", sessions=40)
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        rng = range_from_params({"start_date": "2024-03-01", "end_date": "2024-03-10"})
        journeys.extract_journeys(db, "r1", rng, max_sessions=10)
        with pytest.raises(api_stage.StagedJourneysCutError, match="limit of 10 sessions .* re-run extract_journeys"):
            api_stage.pack_requests(db, "r1", max_journeys=100, max_sessions=11)
        assert api_stage.pack_requests(db, "r1", max_journeys=100, max_sessions=9).truncated == len(LONG_CONVERSIONS)
        assert api_stage.pack_requests(db, "r1", max_journeys=100, max_sessions=10).truncated == len(LONG_CONVERSIONS)
    finally:
        db.close()


def test_the_extraction_counts_every_session_of_a_cut_journey(tmp_path):
    path = long_history_db(tmp_path / "db.sqlite", sessions=40)
    with sqlite3.connect(path) as conn:
        expected = {c: conn.execute("SELECT COUNT(*) FROM session_sources WHERE user_id = ? "
                                    "AND event_date || ' ' || event_time < ? || ' ' || ?", (u, d, t)).fetchone()[0]
                    for c, u, d, t, _ in LONG_CONVERSIONS}
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        rng = range_from_params({"start_date": "2024-03-01", "end_date": "2024-03-10"})
        summary = journeys.extract_journeys(db, "r1", rng, max_sessions=3)
        lengths = dict(db.query("SELECT conv_id, n_sessions FROM attribution_stg_conversions WHERE user_id = 'u1'"))
        kept = dict(db.query("SELECT conv_id, COUNT(*) FROM attribution_stg_sessions GROUP BY conv_id"))
    finally:
        db.close()
    assert lengths == expected and all(n > 3 for n in expected.values())
    assert {c: kept[c] for c in expected} == dict.fromkeys(expected, 3)
    assert summary.max_journey_sessions == max(expected.values())
