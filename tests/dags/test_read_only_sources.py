"""The package never changes what it does not own, and every path gives the same digits.

- PostgreSQL: the sources live in a schema ``raw`` that the pipeline's role can only read (two
  of them are views); its own tables go to ``attribution``. The catalog of ``raw`` is the same
  before and after a run, and so is that of an upgrade from a database version 1 had touched.
- SQLite: the schema of the source tables (a user's index among them) and the journal mode of
  the file are the same before and after a run.
- Daily runs in shuffled order, one range run and single-task re-runs leave equal tables, and the
  CSV, the chart and the run summary give the same totals, to the last digit.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import sqlite3
import uuid
from decimal import Decimal

import pytest

from ihc_attribution_dev.demo_data import DemoConfig, generate
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve

pytestmark = pytest.mark.slow  # make test-slow; CI runs both

psycopg2 = pytest.importorskip("psycopg2")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "connect_timeout": 3}
API_KEY = "read-only-test-key-93b1"
RANGE = {"start_date": "2024-01-02", "end_date": "2024-01-04"}
SOURCES = ("session_sources", "conversions", "session_costs")


@pytest.fixture(scope="module")
def source_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("read-only") / "source.db"
    generate(path, DemoConfig(start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 4), conversions=90,
                              sessions_per_conversion=12, seed=23, lookback_days=8))
    with sqlite3.connect(path) as conn:  # only rows a DATE/TIME column accepts (PostgreSQL twin)
        conn.execute("DELETE FROM session_sources WHERE date(event_date, '+0 days') IS NOT event_date "
                     "OR time(event_time) IS NOT event_time")
    return path


@pytest.fixture
def ihc_api(monkeypatch, tmp_path):
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        host, port = url.removeprefix("http://").split(":")
        monkeypatch.setenv(
            "AIRFLOW_CONN_IHC_API",
            json.dumps({"conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": API_KEY,
                        "extra": {"conv_type_id": "demo", "max_journeys_per_request": 30}}),
        )
        monkeypatch.setenv("ATTRIBUTION_OUTPUT_BASE_URL", str(tmp_path / "out"))
        yield tmp_path / "out"


def _run(dag, monkeypatch, conn: dict, **kwargs):
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps(conn))
    dagrun = dag.test(**kwargs)
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "success", states
    return dagrun


# --- PostgreSQL: a read-only role, sources in another schema, two of them views -----------------


def _admin(dbname="postgres"):
    try:
        conn = psycopg2.connect(dbname=dbname, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    conn.autocommit = True
    return conn


@pytest.fixture
def warehouse(source_db):
    """A database whose ``raw`` schema the role ``reader`` may only read, and ``attribution`` write."""
    name = "ihc_ro_" + uuid.uuid4().hex[:10]
    role = name + "_reader"
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"CREATE ROLE {role} LOGIN")
    conn = _admin(name)
    lite = sqlite3.connect(source_db)
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA raw; CREATE SCHEMA attribution; SET search_path TO raw")
        cur.execute(
            "CREATE TABLE sessions_loaded (session_id TEXT PRIMARY KEY, user_id TEXT, event_date DATE, event_time TIME, "
            "channel_name TEXT, holder_engagement INT, closer_engagement INT, impression_interaction INT);"
            "CREATE TABLE conversions (conv_id TEXT PRIMARY KEY, user_id TEXT, conv_date DATE, conv_time TIME, "
            "revenue NUMERIC(12, 2));"
            "CREATE TABLE costs_loaded (session_id TEXT PRIMARY KEY, cost NUMERIC(12, 2));"
            "CREATE INDEX ix_conversions_date ON conversions (conv_date);"
            "CREATE VIEW session_sources AS SELECT * FROM sessions_loaded;"
            "CREATE VIEW session_costs AS SELECT session_id, cost FROM costs_loaded"
        )
        for table, source, n in (("sessions_loaded", "session_sources", 8), ("conversions", "conversions", 5),
                                 ("costs_loaded", "session_costs", 2)):
            rows = lite.execute(f"SELECT * FROM {source}").fetchall()
            cur.executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * n)})", rows)
        cur.execute(f"GRANT USAGE ON SCHEMA raw TO {role}")
        cur.execute(f"GRANT SELECT ON raw.session_sources, raw.conversions, raw.session_costs TO {role}")
        cur.execute(f"GRANT USAGE, CREATE ON SCHEMA attribution TO {role}")
    lite.close()
    try:
        yield {"dbname": name, "role": role, "admin": conn}
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def _raw_catalog(conn) -> dict[str, list[tuple]]:
    """Everything in the schema ``raw``: relations, columns, indexes, triggers, functions, views."""
    queries = {
        "relations": "SELECT c.relname, c.relkind, c.relowner::regrole::text FROM pg_class c "
                     "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'raw' ORDER BY 1",
        "columns": "SELECT table_name, column_name, data_type, ordinal_position FROM information_schema.columns "
                   "WHERE table_schema = 'raw' ORDER BY 1, 4",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'raw' ORDER BY 1",
        "triggers": "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'raw' ORDER BY 1",
        "functions": "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                     "WHERE n.nspname IN ('raw', 'attribution') ORDER BY 1",
        "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'raw' ORDER BY 1",
        "grants": "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
                  "WHERE table_schema = 'raw' ORDER BY 1, 2, 3",
    }
    with conn.cursor() as cur:
        out = {}
        for name, sql in queries.items():
            cur.execute(sql)
            out[name] = cur.fetchall()
    return out


def test_a_select_only_role_runs_the_dag_and_leaves_the_raw_schema_as_it_was(dag, ihc_api, warehouse, monkeypatch):
    admin = warehouse["admin"]
    before = _raw_catalog(admin)
    assert len(before["views"]) == 2 and before["indexes"], "the comparison must not be vacuous"
    conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": warehouse["role"],
            "schema": warehouse["dbname"], "extra": {"options": "-csearch_path=attribution,raw"}}
    _run(dag, monkeypatch, conn, run_conf=RANGE)
    _run(dag, monkeypatch, conn, run_conf=RANGE)  # a second run upgrades nothing, changes nothing
    assert _raw_catalog(admin) == before
    with admin.cursor() as cur:
        cur.execute("SELECT table_schema, COUNT(*) FROM attribution.channel_reporting, information_schema.tables t "
                    "WHERE t.table_name = 'channel_reporting' GROUP BY 1")
        assert cur.fetchall()[0][0] == "attribution"
        cur.execute("SELECT COUNT(*) FROM attribution.attribution_customer_journey")
        assert cur.fetchone()[0] > 100
        cur.execute("SELECT MAX(version) FROM attribution.attribution_schema_version")
        assert cur.fetchone()[0] == 3


def test_an_upgrade_removes_version_1s_triggers_and_function_and_never_a_users_index(
    dag, ihc_api, warehouse, monkeypatch
):
    admin = warehouse["admin"]
    with admin.cursor() as cur:  # what version 1 left behind, on tables the loader owns
        cur.execute(
            "SET search_path TO raw;"
            "CREATE TABLE attribution.attribution_session_totals_stale (date TEXT NOT NULL);"
            "CREATE FUNCTION attribution.attribution_totals_v1_mark() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO attribution.attribution_session_totals_stale VALUES ('*'); RETURN NULL; END $$;"
            "CREATE TRIGGER attribution_totals_costs_insert AFTER INSERT ON costs_loaded "
            "FOR EACH STATEMENT EXECUTE FUNCTION attribution.attribution_totals_v1_mark();"
            f"ALTER TABLE costs_loaded OWNER TO {warehouse['role']};"
            f"ALTER FUNCTION attribution.attribution_totals_v1_mark() OWNER TO {warehouse['role']};"
            f"ALTER TABLE attribution.attribution_session_totals_stale OWNER TO {warehouse['role']}"
        )
    before = _raw_catalog(admin)
    conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": warehouse["role"],
            "schema": warehouse["dbname"], "extra": {"options": "-csearch_path=attribution,raw"}}
    _run(dag, monkeypatch, conn, run_conf=RANGE)
    after = _raw_catalog(admin)
    assert after["triggers"] == [] and before["triggers"]
    assert after["functions"] == []
    assert after["indexes"] == before["indexes"], "a user's index is never dropped"
    with admin.cursor() as cur:
        cur.execute("SELECT to_regclass('attribution.attribution_session_totals_stale')")
        assert cur.fetchone()[0] is None


# --- SQLite: the sources' schema and the file's journal mode -----------------------------------


def _sqlite_state(path) -> tuple:
    with sqlite3.connect(path) as conn:
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name IN (?, ?, ?) ORDER BY 1, 2", SOURCES
        ).fetchall()
        return schema, conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_sqlite_sources_keep_their_schema_their_indexes_and_their_journal_mode(
    dag, ihc_api, source_db, tmp_path, monkeypatch
):
    db = tmp_path / "warehouse.db"
    shutil.copy(source_db, db)
    with sqlite3.connect(db) as conn:  # a user's own index, under the name version 1 dropped
        conn.execute("CREATE INDEX ix_session_sources_date ON session_sources (event_date)")
    before = _sqlite_state(db)
    assert before[1] == "delete" and any(name == "ix_session_sources_date" for _, name, _, _ in before[0])
    _run(dag, monkeypatch, {"conn_type": "sqlite", "host": str(db)}, run_conf=RANGE)
    assert _sqlite_state(db) == before


def test_a_missing_sqlite_file_fails_at_once_and_is_not_created(dag, ihc_api, tmp_path, monkeypatch):
    from ihc_attribution.errors import PermanentFailure

    from ihc_attribution import tasks

    typo = tmp_path / "typo_challange.db"
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(typo)}))
    with pytest.raises(PermanentFailure, match="does not exist"):
        tasks.setup_tables({"params": RANGE, "run_id": "manual__typo"})
    assert not typo.exists()


def test_a_database_without_the_source_tables_fails_naming_the_table(dag, ihc_api, tmp_path, monkeypatch):
    from ihc_attribution.errors import PermanentFailure

    from ihc_attribution import tasks

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(empty)}))
    with pytest.raises(PermanentFailure, match="source table session_sources cannot be read"):
        tasks.setup_tables({"params": RANGE, "run_id": "manual__empty"})
    with sqlite3.connect(empty) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


# --- every path, the same digits --------------------------------------------------------------


def _result_tables(path) -> tuple[list, list]:
    with sqlite3.connect(path) as conn:
        return (
            conn.execute("SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2").fetchall(),
            conn.execute("SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting ORDER BY 1, 2").fetchall(),
        )


def test_daily_runs_a_range_run_and_task_reruns_give_equal_tables_and_one_total(
    dag, ihc_api, source_db, tmp_path, monkeypatch
):
    daily, ranged = tmp_path / "daily.db", tmp_path / "range.db"
    shutil.copy(source_db, daily)
    shutil.copy(source_db, ranged)
    for day in (4, 2, 3):  # out of order; each run's data interval ends at its logical date
        _run(dag, monkeypatch, {"conn_type": "sqlite", "host": str(daily)},
             logical_date=dt.datetime(2024, 1, day + 1, tzinfo=dt.timezone.utc))
    dagrun = _run(dag, monkeypatch, {"conn_type": "sqlite", "host": str(ranged)}, run_conf=RANGE)
    ranged_tables = _result_tables(ranged)
    assert ranged_tables[0] and ranged_tables[1]
    assert _result_tables(daily) == ranged_tables  # exact: no tolerance

    # one task of the range run again, then the report and the export: nothing moves
    from ihc_attribution import tasks

    context = {"params": RANGE, "run_id": dagrun.run_id}
    for stage in (tasks.load_attribution, tasks.build_report):
        stage(context)
    assert _result_tables(ranged) == ranged_tables

    # the run summary, the CSV's column sums and the chart give the same totals
    summary = dagrun.get_task_instance("check_run").xcom_pull(task_ids="check_run")
    exported = dagrun.get_task_instance("export_csv").xcom_pull(task_ids="export_csv")
    with open(exported["path"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for column in ("cost", "ihc", "ihc_revenue"):
        total = sum((Decimal(r[column]) for r in rows), Decimal(0))
        assert Decimal(summary[column]) == total, column
    chart = open(exported["chart"], encoding="utf-8").read()
    assert f"{Decimal(summary['ihc_revenue']):,.2f}" in chart


# --- a dry run estimates the quota and sends nothing -------------------------------------------


def _served(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{url}/stats", timeout=5) as answer:
        return json.load(answer)["requests"]


def test_a_dry_run_sends_nothing_and_its_estimate_is_what_a_real_run_sends(dag, source_db, tmp_path, monkeypatch):
    db = tmp_path / "warehouse.db"
    shutil.copy(source_db, db)
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_BASE_URL", str(tmp_path / "out"))
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        host, port = url.removeprefix("http://").split(":")
        monkeypatch.setenv("AIRFLOW_CONN_IHC_API", json.dumps(
            {"conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": API_KEY,
             "extra": {"conv_type_id": "demo", "max_journeys_per_request": 30}}))
        dry = _run(dag, monkeypatch, {"conn_type": "sqlite", "host": str(db)}, run_conf={**RANGE, "dry_run": True})
        states = {ti.task_id: ti.state for ti in dry.get_task_instances()}
        assert states["call_ihc_api"] == "skipped" and states["load_attribution"] == "skipped"
        assert _served(url) == 0
        estimate = dry.get_task_instance("pack_requests").xcom_pull(task_ids="pack_requests")["requests"]
        assert estimate > 1
        # dag.test() keeps a run's conf in the DAG's params: the real run says dry_run false
        _run(dag, monkeypatch, {"conn_type": "sqlite", "host": str(db)}, run_conf={**RANGE, "dry_run": False})
        assert _served(url) == estimate


def test_reattribute_drift_from_the_trigger_form_re_attributes_the_named_days(dag, source_db, ihc_api, tmp_path,
                                                                               monkeypatch):
    db = tmp_path / "warehouse.db"
    shutil.copy(source_db, db)
    conn = {"conn_type": "sqlite", "host": str(db)}
    _run(dag, monkeypatch, conn, run_conf={**RANGE, "reattribute_drift": False})
    with sqlite3.connect(db) as sql:  # a channel renamed in place, on a session credited on the range's first day
        (session_id,) = sql.execute("SELECT session_id FROM attribution_credit WHERE conv_date = ? ORDER BY 1 LIMIT 1",
                                    (RANGE["start_date"],)).fetchone()
        sql.execute("UPDATE session_sources SET channel_name = 'Renamed' WHERE session_id = ?", (session_id,))
    last_day = {"start_date": RANGE["end_date"], "end_date": RANGE["end_date"]}
    dagrun = _run(dag, monkeypatch, conn, run_conf={**last_day, "reattribute_drift": True})
    summary = dagrun.get_task_instance("check_run").xcom_pull(task_ids="check_run")
    assert summary["reattributed_days"] == [RANGE["start_date"]] and summary["changed_days"] == []
    with sqlite3.connect(db) as sql:
        assert {c for (c,) in sql.execute("SELECT channel_name FROM attribution_credit WHERE session_id = ?",
                                          (session_id,))} == {"Renamed"}
    # dag.test() keeps a run's conf in the DAG's params: back to the default for the tests after this one
    dagrun = _run(dag, monkeypatch, conn, run_conf={**last_day, "reattribute_drift": False})
    assert dagrun.get_task_instance("check_run").xcom_pull(task_ids="check_run")["reattributed_days"] == []
