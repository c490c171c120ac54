"""Sources as PostgreSQL warehouses hold them give the tables of the challenge schema on SQLite, exactly.

Each test creates a database of its own on the server at 127.0.0.1:5432 (dropped afterwards) and
loads the same rows (tests/dags/source_schemas.py) in another shape: ``BIGINT`` ids and one
``TIMESTAMP`` column (or a ``TIMESTAMP`` date column), ``VARCHAR`` ids with text dates and ``REAL`` money, renamed tables and
columns in a schema the pipeline's role may only read (not on its ``search_path``) with
``TIMESTAMPTZ`` orders in a database whose time zone is not UTC, views with ``TIME WITH TIME
ZONE`` and ``BOOLEAN`` flags, a database with ``DateStyle`` German, and one whose collation is a
language's (ICU ``en-US``), where tied sessions must be broken in byte order as on SQLite. The
run's tables must equal those of the SQLite run over the challenge schema; the renamed case runs
the whole DAG. Skipped, saying why, when no server answers.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid

import pytest

from ihc_attribution import schema, sources
from ihc_attribution.db import Database
from tests.dags.source_schemas import RANGE, csv_bytes, issue_dates, payloads, result_tables, source_rows, utc_text
from tests.helpers import FakeIhcClient, make_db, run_stages

pytestmark = pytest.mark.slow  # make test-slow; CI runs both

psycopg2 = pytest.importorskip("psycopg2")
PG = {"host": "127.0.0.1", "port": 5432, "connect_timeout": 3}


def _admin(dbname: str = "postgres"):
    try:
        conn = psycopg2.connect(dbname=dbname, user="postgres", **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def _database(create_options: str = "", settings: dict[str, str] | None = None):
    """A fresh database of this test, with ``ALTER DATABASE ... SET`` settings; dropped afterwards."""
    name = "ihc_sources_" + uuid.uuid4().hex[:10]
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} {create_options}")
        for key, value in (settings or {}).items():
            cur.execute(f"ALTER DATABASE {name} SET {key} = %s", (value,))
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {name}_reader")
        admin.close()


def _load(dbname: str, ddl: str, inserts: dict[str, list]) -> None:
    conn = _admin(dbname)
    with conn.cursor() as cur:
        cur.execute(ddl)
        for table, rows in inserts.items():
            cur.executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(rows[0]))})", rows)
    conn.close()


def bigint_ids_and_timestamps(dbname, sessions, conversions, costs) -> dict:
    _load(dbname, """
        CREATE TABLE session_sources (session_id BIGINT PRIMARY KEY, user_id BIGINT, event_ts TIMESTAMP(0),
            channel_name TEXT, holder_engagement SMALLINT, closer_engagement SMALLINT, impression_interaction SMALLINT);
        CREATE TABLE conversions (conv_id BIGINT PRIMARY KEY, user_id BIGINT, conv_date TIMESTAMP, conv_time TIME,
            revenue DOUBLE PRECISION);
        CREATE TABLE session_costs (session_id BIGINT PRIMARY KEY, cost NUMERIC(12, 2));
    """, {
        "session_sources": [(s[0], s[1], f"{s[2]} {s[3]}", *s[4:]) for s in sessions],
        "conversions": [(c[0], c[1], c[2], *c[3:]) for c in conversions],  # a TIMESTAMP date column, at midnight
        "session_costs": costs,
    })
    return {"session_sources": {"columns": {"event_timestamp": "event_ts"}}}


def varchar_ids_text_dates_real_money(dbname, sessions, conversions, costs) -> dict:
    _load(dbname, """
        CREATE TABLE session_sources (session_id VARCHAR(40), user_id VARCHAR(40), event_date TEXT, event_time TEXT,
            channel_name VARCHAR(80), holder_engagement INT, closer_engagement INT, impression_interaction INT);
        CREATE TABLE conversions (conv_id VARCHAR(40), user_id VARCHAR(40), conv_date TEXT, conv_time TEXT, revenue REAL);
        CREATE TABLE session_costs (session_id VARCHAR(40), cost REAL);
    """, {"session_sources": sessions, "conversions": conversions, "session_costs": costs})
    return {}


_RAW_DDL = """
    CREATE SCHEMA raw; CREATE SCHEMA attrib;
    CREATE TABLE raw."Web Sessions" ("Session ID" TEXT PRIMARY KEY, "Visitor" TEXT, "Day" DATE, "Clock" TIME,
        "Channel" TEXT, "Holder" INT, "Closer" INT, "Impression" INT);
    CREATE TABLE raw."Orders" ("Order ID" TEXT PRIMARY KEY, "Visitor" TEXT, "Ordered At" TIMESTAMPTZ, "Amount" NUMERIC(12, 2));
    CREATE TABLE raw."Ad Costs" ("Session ID" TEXT PRIMARY KEY, "Spend" DOUBLE PRECISION);
    CREATE TABLE public.session_sources (session_id TEXT);  -- what a search_path would find: never read
"""


def renamed_in_a_read_only_schema(dbname, sessions, conversions, costs) -> dict:
    reader = f"{dbname}_reader"
    _load(dbname, _RAW_DDL + f"""
        CREATE ROLE {reader} LOGIN;
        GRANT USAGE ON SCHEMA raw TO {reader}; GRANT SELECT ON ALL TABLES IN SCHEMA raw TO {reader};
        GRANT USAGE, CREATE ON SCHEMA attrib TO {reader};
    """, {
        'raw."Web Sessions"': sessions,
        'raw."Orders"': [(c[0], c[1], utc_text(c[2], c[3], 2), c[4]) for c in conversions],  # at +02:00
        'raw."Ad Costs"': costs,
    })
    visitor = {"user_id": "Visitor"}
    return {
        "session_sources": {"schema": "raw", "table": "Web Sessions", "columns": {
            "session_id": "Session ID", **visitor, "event_date": "Day", "event_time": "Clock", "channel_name": "Channel",
            "holder_engagement": "Holder", "closer_engagement": "Closer", "impression_interaction": "Impression"}},
        "conversions": {"schema": "raw", "table": "Orders", "columns": {
            "conv_id": "Order ID", **visitor, "conv_timestamp": "Ordered At", "revenue": "Amount"}},
        "session_costs": {"schema": "raw", "table": "Ad Costs", "columns": {"session_id": "Session ID", "cost": "Spend"}},
    }


def views_time_zones_and_booleans(dbname, sessions, conversions, costs) -> dict:
    _load(dbname, """
        CREATE TABLE sessions_loaded (session_id TEXT, user_id TEXT, event_date DATE, event_time TIME, channel_name TEXT,
            holder_engagement BOOLEAN, closer_engagement BOOLEAN, impression_interaction BOOLEAN);
        CREATE TABLE orders_loaded (conv_id TEXT, user_id TEXT, conv_date DATE, conv_time TIME WITH TIME ZONE,
            revenue NUMERIC(12, 2));
        CREATE TABLE costs_loaded (session_id TEXT, cost NUMERIC);
        CREATE VIEW v_sessions AS SELECT * FROM sessions_loaded;
        CREATE VIEW v_orders AS SELECT * FROM orders_loaded;
        CREATE VIEW v_costs AS SELECT session_id, cost FROM costs_loaded;
    """, {
        "sessions_loaded": [(*s[:5], *map(bool, s[5:])) for s in sessions],
        "orders_loaded": [(c[0], c[1], *utc_text(c[2], c[3], -7).split("T"), c[4]) for c in conversions],  # at -07:00
        "costs_loaded": costs,
    })
    return {"session_sources": {"table": "v_sessions"}, "conversions": {"table": "v_orders"},
            "session_costs": {"table": "v_costs"}}


def challenge_schema(dbname, sessions, conversions, costs) -> dict:
    _load(dbname, schema.challenge_ddl(), {"session_sources": sessions, "conversions": conversions,
                                            "session_costs": costs})
    return {}


# case: (load, integer ids, CREATE DATABASE options, ALTER DATABASE settings, the pipeline's login and options)
CASES = {
    "bigint ids, one timestamp column": (bigint_ids_and_timestamps, True, "", {}, None),
    "varchar ids, text dates, real money, no keys": (varchar_ids_text_dates_real_money, False, "", {}, None),
    "renamed, in a read-only schema off the search_path, timestamptz": (
        renamed_in_a_read_only_schema, False, "", {"TimeZone": "Asia/Kolkata"}, "-csearch_path=attrib"),
    "views, time with time zone, boolean flags": (views_time_zones_and_booleans, False, "", {}, None),
    "DateStyle German": (challenge_schema, False, "", {"DateStyle": "German, DMY"}, None),
    "a language's collation": (
        challenge_schema, False, "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'", {}, None),
}


@pytest.fixture(scope="module")
def challenge_tables(tmp_path_factory):
    """The tables of the SQLite run over the challenge schema, per kind of ids."""
    out = {}
    for int_ids in (False, True):
        path = make_db(tmp_path_factory.mktemp("challenge") / "challenge.db", *source_rows(int_ids=int_ids))
        db = Database.connect_sqlite(str(path))
        try:
            client = FakeIhcClient()
            run_stages(db, "r", RANGE["start_date"], RANGE["end_date"], client, max_journeys=7,
                       output_dir=path.parent / "out")
            out[int_ids] = {**result_tables(db.query), "issues as the report pages date them": issue_dates(db.conn),
                            "csv": csv_bytes(path.parent / "out"), "requests sent": payloads(client)}
        finally:
            db.close()
    return out


def _pipeline_db(dbname: str, options: str | None) -> Database:
    user = f"{dbname}_reader" if options else "postgres"
    return Database(psycopg2.connect(dbname=dbname, user=user, options=options or "", **PG))


@pytest.mark.parametrize("case", list(CASES))
def test_a_warehouse_schema_gives_the_tables_of_the_challenge_schema(case, challenge_tables, monkeypatch, tmp_path):
    load, int_ids, create, settings, options = CASES[case]
    with _database(create, settings) as dbname:
        monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(load(dbname, *source_rows(int_ids=int_ids))))
        db = _pipeline_db(dbname, options)
        try:
            schema.check_sources(db)
            client = FakeIhcClient()
            run_stages(db, "r", RANGE["start_date"], RANGE["end_date"], client, max_journeys=7, output_dir=tmp_path)
            got = {**result_tables(db.query), "issues as the report pages date them": issue_dates(db.conn),
                   "csv": csv_bytes(tmp_path), "requests sent": payloads(client)}
            ordered = db.scalar("SELECT 'B1' < 'a1'")
        finally:
            db.close()
    expected = challenge_tables[int_ids]
    assert all(expected.values()) and any(r == "no_sessions" for _, r, _ in expected["attribution_issues"])
    if case == "a language's collation":
        assert ordered is False, "the database's collation must not be byte order for this case to mean anything"
    assert got == expected


def test_the_dag_reads_renamed_sources_in_a_read_only_schema(dag, tmp_path, monkeypatch):
    """The whole DAG through a ``postgres`` connection, against the local IHC server, compared with SQLite."""
    from ihc_attribution_dev.server.config import ServerConfig
    from ihc_attribution_dev.server.testing import serve

    rows = source_rows(seed=3, users=40)
    lite = make_db(tmp_path / "challenge.db", *rows)
    with _database(settings={"TimeZone": "America/Los_Angeles", "DateStyle": "German, DMY"}) as dbname, \
            serve(ServerConfig(api_keys=("source-schemas-key",))) as url:
        host, port = url.removeprefix("http://").split(":")
        monkeypatch.setenv("AIRFLOW_CONN_IHC_API", json.dumps(
            {"conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": "source-schemas-key",
             "extra": {"conv_type_id": "demo", "max_journeys_per_request": 20}}))
        connections = {
            "challenge": {"conn_type": "sqlite", "host": str(lite)},
            "warehouse": {"conn_type": "postgres", "host": PG["host"], "port": PG["port"], "login": f"{dbname}_reader",
                          "schema": dbname, "extra": {"options": "-csearch_path=attrib"}},
        }
        setting = json.dumps(renamed_in_a_read_only_schema(dbname, *rows))
        for name, conn in connections.items():
            if name == "warehouse":
                monkeypatch.setenv("ATTRIBUTION_SOURCES", setting)
            monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps(conn))
            monkeypatch.setenv("ATTRIBUTION_OUTPUT_BASE_URL", str(tmp_path / f"{name}-out"))
            dagrun = dag.test(run_conf=RANGE)
            assert dagrun.state == "success", {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
        with sqlite3.connect(lite) as conn:
            expected = result_tables(lambda sql: conn.execute(sql).fetchall())
        admin = _admin(dbname)
        with admin.cursor() as cur:
            cur.execute("SET search_path TO attrib")

            def query(sql):
                cur.execute(sql)
                return cur.fetchall()

            got = result_tables(query)
            cur.execute("SELECT COUNT(*) FROM public.session_sources")
            assert cur.fetchone()[0] == 0
        admin.close()
    assert expected["attribution_customer_journey"]
    assert got == expected
    csv = "channel_reporting_2024-01-02_2024-01-05.csv"
    assert (tmp_path / "warehouse-out" / csv).read_bytes() == (tmp_path / "challenge-out" / csv).read_bytes()


# --- what setup_tables says when a column cannot be read -----------------------------------------


@pytest.mark.parametrize("column_type, says", [
    ("revenue TEXT", "column revenue (revenue) has type text; it must be NUMERIC, REAL, DOUBLE PRECISION"),
    ("revenue NUMERIC, conv_ts INTERVAL", "the timestamp column has type interval"),
    ("amount NUMERIC", "has no column revenue"),
])
def test_a_column_of_an_unusable_type_fails_naming_it_the_table_and_the_database(monkeypatch, column_type, says):
    with _database() as dbname:
        _load(dbname, schema.challenge_ddl().split("CREATE TABLE IF NOT EXISTS conversions")[0]
              + f"CREATE TABLE conversions (conv_id TEXT, user_id TEXT, conv_date DATE, conv_time TIME, {column_type});"
              "CREATE TABLE session_costs (session_id TEXT, cost REAL);", {})
        setting = {"conversions": {"columns": {"conv_timestamp": "conv_ts"}}} if "conv_ts" in column_type else {}
        monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(setting))
        db = _pipeline_db(dbname, None)
        try:
            with pytest.raises(sources.SourceTableError) as info:
                schema.check_sources(db)
        finally:
            db.close()
    message = str(info.value)
    assert message.startswith("source table conversions") and says in message, message
    assert f"PostgreSQL database {dbname}" in message and "\n" not in message


def test_a_schema_typo_fails_at_once_and_a_table_on_the_search_path_is_never_read_instead(monkeypatch):
    with _database() as dbname:
        setting = renamed_in_a_read_only_schema(dbname, *source_rows(users=5))
        for spec in setting.values():
            spec["schema"] = "Raw"
        monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(setting))
        db = _pipeline_db(dbname, None)  # search_path "$user", public: public.session_sources is there
        try:
            with pytest.raises(sources.SourceTableError) as info:
                schema.check_sources(db)
        finally:
            db.close()
    message = str(info.value)
    assert message.startswith(f"source table session_sources (Raw.Web Sessions) cannot be read in PostgreSQL database "
                              f"{dbname}"), message
    assert "\n" not in message


def test_a_truncated_journey_tied_at_its_earliest_sent_second_is_not_named_under_a_language_s_collation(monkeypatch):
    """The cut keeps the tied session that sorts last in byte order ('a8', not 'B7'), and the earliest
    session sent is the first in byte order ('B5', not 'a6'); the comparison of the journeys with the
    sources must break ties the same way, whatever the database's collation."""
    sessions = [("B7", "u1", "2024-01-01", "10:00:00", "Email", 1, 1, 0),
                ("a8", "u1", "2024-01-01", "10:00:00", "Direct Traffic", 1, 1, 0),
                ("z9", "u1", "2024-01-02", "10:00:00", "Email", 1, 1, 0),
                ("s1", "u2", "2024-01-05", "10:00:00", "Email", 1, 1, 0),
                ("B5", "u3", "2024-01-01", "10:00:00", "Email", 1, 1, 0),  # both sent: the earliest is B5
                ("a6", "u3", "2024-01-01", "10:00:00", "Direct Traffic", 1, 1, 0)]
    conversions = [("c1", "u1", "2024-01-03", "10:00:00", 10.0), ("c2", "u2", "2024-01-06", "10:00:00", 5.0),
                   ("c3", "u3", "2024-01-03", "10:00:00", 7.0)]
    monkeypatch.delenv("ATTRIBUTION_SOURCES", raising=False)
    with _database(CASES["a language's collation"][2]) as dbname:
        challenge_schema(dbname, sessions, conversions, [("z9", 1.5)])
        db = _pipeline_db(dbname, None)
        try:
            assert db.scalar("SELECT 'B7' > 'a8'") is True, "the database's collation must not be byte order"
            run_stages(db, "history", "2024-01-03", "2024-01-03", FakeIhcClient(), max_sessions=2)
            sent = db.query("SELECT session_id FROM attribution_customer_journey WHERE conv_id = 'c1' ORDER BY 1")
            later = run_stages(db, "later", "2024-01-06", "2024-01-06", FakeIhcClient(), max_sessions=2)
            drift = db.query("SELECT conv_id, detail FROM attribution_drift")
        finally:
            db.close()
    assert sent == [("a8",), ("z9",)]
    assert later.changed_days == [] and drift == []
