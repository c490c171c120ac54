"""The whole DAG through an Airflow connection of type ``postgres``, compared with the same run on SQLite.

Each test creates a database of its own on the PostgreSQL server at 127.0.0.1:5432 (dropped
afterwards), loads the same generated data as a SQLite twin, runs ``dag.test()`` against the
local IHC server on both, and compares the result tables and the CSV. The source tables are
typed ``DATE``/``TIME`` (the challenge DDL) or ``TEXT`` (as loaded from CSV, bad rows included).
Skipped, saying why, when no server answers.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import uuid

import pytest

from ihc_attribution_dev.demo_data import DemoConfig, generate
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve

psycopg2 = pytest.importorskip("psycopg2")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "connect_timeout": 3}
API_KEY = "pg-dag-test-key-51c2"
RANGE = {"start_date": "2024-01-01", "end_date": "2024-01-03"}
CSV_NAME = "channel_reporting_2024-01-01_2024-01-03.csv"

TEXT_DDL = """
CREATE TABLE session_sources (session_id TEXT PRIMARY KEY, user_id TEXT, event_date TEXT, event_time TEXT,
    channel_name TEXT, holder_engagement INT, closer_engagement INT, impression_interaction INT);
CREATE TABLE conversions (conv_id TEXT PRIMARY KEY, user_id TEXT, conv_date TEXT, conv_time TEXT, revenue FLOAT);
CREATE TABLE session_costs (session_id TEXT PRIMARY KEY, cost FLOAT);
"""


@pytest.fixture(scope="module")
def source_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("pg-dag") / "source.db"
    generate(path, DemoConfig(start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 3), conversions=120,
                              sessions_per_conversion=15, seed=5, lookback_days=10))
    return path


def _admin():
    try:
        conn = psycopg2.connect(dbname="postgres", **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_database():
    """A fresh, empty database of this test only."""
    name = "ihc_attribution_test_" + uuid.uuid4().hex[:10]
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _load(sqlite_path, dbname: str, *, text_columns: bool) -> None:
    """Copy the source tables into PostgreSQL, as TEXT columns or as the challenge's DATE/TIME ones."""
    from ihc_attribution import schema

    src = sqlite3.connect(sqlite_path)
    conn = psycopg2.connect(dbname=dbname, **PG)
    with conn, conn.cursor() as cur:
        cur.execute(TEXT_DDL if text_columns else schema.challenge_ddl())
        for table, n in (("session_sources", 8), ("conversions", 5), ("session_costs", 2)):
            rows = src.execute(f"SELECT * FROM {table}").fetchall()
            cur.executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * n)})", rows)
    conn.close()
    src.close()


def _without_bad_dates(path) -> None:
    """Drop the rows a DATE/TIME column refuses (the demo's malformed session), in the SQLite twin too."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "DELETE FROM session_sources WHERE date(event_date, '+0 days') IS NOT event_date "
            "OR time(event_time) IS NOT event_time"
        )


@pytest.fixture
def ihc_api(monkeypatch):
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        host, port = url.removeprefix("http://").split(":")
        monkeypatch.setenv(
            "AIRFLOW_CONN_IHC_API",
            json.dumps({"conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": API_KEY,
                        "extra": {"conv_type_id": "demo", "max_journeys_per_request": 30}}),
        )
        yield


def _run(dag, monkeypatch, conn: dict, out) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps(conn))
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_BASE_URL", str(out))
    dagrun = dag.test(run_conf=RANGE)
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "success", states


def _tables(rows_of):
    attribution = [tuple(r) for r in rows_of("SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2")]
    report = [
        (ch, str(d), round(c, 6), round(i, 6), round(r, 6))
        for ch, d, c, i, r in rows_of(
            "SELECT channel_name, CAST(date AS TEXT), cost, ihc, ihc_revenue FROM channel_reporting ORDER BY 1, 2"
        )
    ]
    issues = [tuple(r) for r in rows_of("SELECT conv_id, reason FROM attribution_issues ORDER BY 1, 2")]
    return attribution, report, issues


@pytest.mark.parametrize("text_columns", [False, True], ids=["date-time-columns", "text-columns"])
def test_dag_on_a_postgres_connection_gives_the_tables_and_csv_of_sqlite(
    dag, ihc_api, source_db, pg_database, tmp_path, monkeypatch, text_columns
):
    lite = tmp_path / "challenge.db"
    shutil.copy(source_db, lite)
    if not text_columns:
        _without_bad_dates(lite)
    _load(lite, pg_database, text_columns=text_columns)

    _run(dag, monkeypatch, {"conn_type": "sqlite", "host": str(lite)}, tmp_path / "lite-out")
    _run(dag, monkeypatch, {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                            "schema": pg_database}, tmp_path / "pg-out")

    with sqlite3.connect(lite) as conn:
        expected = _tables(lambda sql: conn.execute(sql).fetchall())
    pg = psycopg2.connect(dbname=pg_database, **PG)
    try:
        with pg.cursor() as cur:
            def rows_of(sql):
                cur.execute(sql)
                return cur.fetchall()

            got = _tables(rows_of)
            cur.execute(
                "SELECT table_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name IN ('session_sources', 'conversions') "
                "AND column_name IN ('event_date', 'conv_date')"
            )
            source_types = set(cur.fetchall())
    finally:
        pg.close()
    kind = "text" if text_columns else "date"
    assert source_types == {("session_sources", kind), ("conversions", kind)}, "the source tables kept their types"
    assert expected[0] and expected[1], "the comparison must not be vacuous"
    assert got == expected
    if text_columns:
        # the demo's malformed session is quarantined on PostgreSQL as on SQLite
        assert "invalid_input" in {reason for _, reason in got[2]}
    assert (tmp_path / "pg-out" / CSV_NAME).read_bytes() == (tmp_path / "lite-out" / CSV_NAME).read_bytes()


@pytest.mark.parametrize("conn", [
    {"conn_type": "mysql", "host": "db.example"},
    {"conn_type": "http", "host": "db.example"},
])
def test_an_unsupported_connection_type_fails_at_once_naming_the_supported_ones(monkeypatch, conn):
    from ihc_attribution.errors import PermanentFailure

    from ihc_attribution import tasks

    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps(conn))
    with pytest.raises(PermanentFailure) as info:
        tasks.setup_tables({"params": RANGE, "run_id": "manual__unsupported"})
    message = str(info.value)
    assert f"type {conn['conn_type']!r}" in message and "postgres, sqlite" in message
    assert "not retried" in message
