"""The Celery end-to-end test's reference starts from the demo's source rows only (runs in make test)."""

from __future__ import annotations

import sqlite3

from ihc_attribution.schema import challenge_ddl
from tests.e2e_celery.test_celery_backfill import _copy_sources


def test_the_reference_copies_the_source_rows_and_no_earlier_results(tmp_path):
    demo = tmp_path / "demo.db"
    with sqlite3.connect(demo) as conn:
        conn.executescript(challenge_ddl())
        conn.executemany("INSERT INTO session_sources VALUES (?, 'u1', ?, ?, 'Email', 1, 0, 0)",
                         [("s1", "2024-01-01", "10:00:00"), ("s2", "2024-01-02", "11:00:00"),
                          ("bad", "2024-02-30", "10:00:00")])  # a date a DATE column refuses
        conn.execute("INSERT INTO conversions VALUES ('c1', 'u1', '2024-01-02', '12:00:00', 10.0)")
        conn.execute("INSERT INTO session_costs VALUES ('s1', 1.5)")
        # what an earlier run on the demo file left there
        conn.execute("INSERT INTO attribution_customer_journey VALUES ('c1', 's1', 1.0)")
        conn.execute("INSERT INTO channel_reporting VALUES ('Email', '2024-01-01', 1.5, 1.0, 10.0)")
        conn.execute("CREATE TABLE attribution_runs (run_id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO attribution_runs VALUES ('manual__1')")
    conn.close()

    lite = tmp_path / "reference.db"
    _copy_sources(demo, lite)

    conn = sqlite3.connect(lite)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"session_sources", "conversions", "session_costs", "attribution_customer_journey",
                          "channel_reporting"}
        assert [r[0] for r in conn.execute("SELECT session_id FROM session_sources ORDER BY 1")] == ["s1", "s2"]
        assert conn.execute("SELECT * FROM conversions").fetchall() == [("c1", "u1", "2024-01-02", "12:00:00", 10.0)]
        assert conn.execute("SELECT * FROM session_costs").fetchall() == [("s1", 1.5)]
        assert conn.execute("SELECT COUNT(*) FROM attribution_customer_journey").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM channel_reporting").fetchone() == (0,)
        assert conn.execute("PRAGMA database_list").fetchall()[1:] == []  # the demo file is detached
    finally:
        conn.close()
