"""The package's schema: only its own tables, an upgrade that removes what version 1 left, index advice."""

from __future__ import annotations

import sqlite3

from ihc_attribution import schema
from ihc_attribution.db import Database
from tests.helpers import make_db

SESSIONS = [("s1", "u1", "2024-01-08", "10:00:00", "Paid Search Brand")]
CONVERSIONS = [("c1", "u1", "2024-01-09", "12:00:00", 100.0)]


def _objects(path) -> set[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return set(conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall())


def test_set_up_creates_only_the_package_s_tables_and_is_idempotent(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE attribution_customer_journey")
        conn.execute("DROP TABLE channel_reporting")
    sources = _objects(path)
    db = Database.connect_sqlite(str(path))
    schema.ensure_schema(db)
    created = _objects(path) - sources
    schema.ensure_schema(db)
    db.close()
    assert _objects(path) == sources | created
    assert all(name.startswith(("attribution_", "ix_attribution_")) or name == "channel_reporting"
               for _, name in created), created
    assert ("table", "channel_reporting") in created and ("table", "attribution_schema_version") in created


def test_an_upgrade_removes_version_1s_triggers_and_tables_once_and_keeps_the_user_s(tmp_path, caplog):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE attribution_session_totals_stale (date TEXT NOT NULL);"
            "CREATE TABLE attribution_report_outdated_dates (date TEXT PRIMARY KEY);"
            "CREATE TRIGGER attribution_totals_sessions_insert AFTER INSERT ON session_sources "
            "BEGIN INSERT INTO attribution_session_totals_stale VALUES (NEW.event_date); END;"
            "CREATE TABLE audit (session_id TEXT);"
            "CREATE TRIGGER users_audit AFTER INSERT ON session_sources BEGIN INSERT INTO audit VALUES (NEW.session_id); END;"
            "CREATE INDEX ix_session_sources_date ON session_sources (event_date);"
            # attribution stored by version 1, which had no dated credit
            "INSERT INTO attribution_customer_journey VALUES ('c1', 's1', 1.0);"
        )
    db = Database.connect_sqlite(str(path))
    with caplog.at_level("WARNING"):
        schema.ensure_schema(db)
        schema.ensure_schema(db)
    db.close()
    upgrades = [r.getMessage() for r in caplog.records if "upgraded the attribution schema" in r.getMessage()]
    assert len(upgrades) == 1 and "attribution_totals_sessions_insert" in upgrades[0]
    objects = _objects(path)
    assert ("trigger", "attribution_totals_sessions_insert") not in objects
    assert ("table", "attribution_session_totals_stale") not in objects
    assert {("trigger", "users_audit"), ("index", "ix_session_sources_date")} <= objects
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO session_sources VALUES ('s2', 'u1', '2024-01-09', '10:00:00', 'Email', 0, 0, 0)")
        assert conn.execute("SELECT * FROM audit").fetchall() == [("s2",)], "the user's loader still works"
        assert conn.execute("SELECT date, channel_name, ihc_e4, ihc_revenue_micros FROM attribution_credit").fetchall() == [
            ("2024-01-08", "Paid Search Brand", 10_000, 100_000_000)
        ]
        assert conn.execute("SELECT version FROM attribution_schema_version").fetchall() == [(3,)]


def test_index_advice_names_the_missing_indexes_and_what_they_save(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)
    db = Database.connect_sqlite(str(path))
    try:
        advice = schema.index_advice(db)
        assert [a.split(":")[0] for a in advice] == [
            "CREATE INDEX ix_session_sources_user_id ON session_sources (user_id)",
            "CREATE INDEX ix_session_sources_event_date ON session_sources (event_date)",
        ]
        db.execute("CREATE INDEX my_dates ON session_sources (event_date, channel_name)")
        assert [a.split(":")[0] for a in schema.index_advice(db)] == [advice[0].split(":")[0]]
    finally:
        db.close()


def test_a_derived_table_of_another_shape_is_built_again_from_what_it_derives_from(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE attribution_credit (conv_id TEXT, session_id TEXT, date TEXT, channel_name TEXT, ihc_e4 INT);"
            "INSERT INTO attribution_customer_journey VALUES ('c1', 's1', 1.0);"
        )
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        assert {"user_id", "session_ts", "position_e4"} <= db.columns("attribution_credit")
        assert db.query("SELECT conv_id, session_id, ihc_e4, last_touch_e4 FROM attribution_credit") == [
            ("c1", "s1", 10_000, 10_000)
        ]
    finally:
        db.close()
