"""Sources as SQLite warehouses hold them give the tables of the challenge schema, exactly.

Each case loads the same rows (tests/dags/source_schemas.py) in another shape: integer ids and
one ``TIMESTAMP`` column in place of date and time (or a ``DATETIME`` date column), ``VARCHAR``
ids and text dates without keys, renamed tables and columns with timestamps at a UTC offset,
views with ``TIME WITH TIME ZONE``, renamed tables in a file of their own (attached read-only),
and points ``ATTRIBUTION_SOURCES`` at them. The run's tables must equal those of the run over the
challenge schema; one case runs the whole DAG, the others the stages (tests/helpers.py).
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from ihc_attribution import schema, sources
from ihc_attribution.db import Database
from tests.dags.source_schemas import RANGE, csv_bytes, issue_dates, payloads, result_tables, source_rows, utc_text
from tests.helpers import FakeIhcClient, make_db, run_stages



def _load(path, ddl: str, inserts: dict[str, list]) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(ddl)
        for table, rows in inserts.items():
            if rows:
                conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(rows[0]))})', rows)


def bigint_ids_and_timestamps(path, sessions, conversions, costs) -> dict:
    _load(path, """
        CREATE TABLE session_sources (session_id BIGINT PRIMARY KEY, user_id BIGINT, event_ts TIMESTAMP,
            channel_name TEXT, holder_engagement INT, closer_engagement INT, impression_interaction INT);
        CREATE TABLE conversions (conv_id BIGINT PRIMARY KEY, user_id BIGINT, conv_date DATETIME, conv_time TIME,
            revenue DOUBLE);
        CREATE TABLE session_costs (session_id BIGINT PRIMARY KEY, cost NUMERIC(12, 2));
    """, {
        "session_sources": [(s[0], s[1], f"{s[2]} {s[3]}", *s[4:]) for s in sessions],
        "conversions": [(c[0], c[1], f"{c[2]} 00:00:00", *c[3:]) for c in conversions],  # a date as a timestamp
        "session_costs": costs,
    })
    return {"session_sources": {"columns": {"event_timestamp": "event_ts"}}}


def varchar_ids_and_text_dates(path, sessions, conversions, costs) -> dict:
    _load(path, """
        CREATE TABLE session_sources (session_id VARCHAR(40), user_id VARCHAR(40), event_date TEXT, event_time TEXT,
            channel_name VARCHAR(80), holder_engagement INTEGER, closer_engagement INTEGER, impression_interaction INTEGER);
        CREATE TABLE conversions (conv_id VARCHAR(40), user_id VARCHAR(40), conv_date TEXT, conv_time TEXT, revenue REAL);
        CREATE TABLE session_costs (session_id VARCHAR(40), cost REAL);
    """, {"session_sources": sessions, "conversions": conversions, "session_costs": costs})
    return {}


def renamed_tables_and_columns(path, sessions, conversions, costs) -> dict:
    _load(path, """
        CREATE TABLE "Web Sessions" ("Session ID" TEXT PRIMARY KEY, "Visitor" TEXT, "Day" DATE, "Clock" TIME,
            "Channel" TEXT, "Holder" INT, "Closer" INT, "Impression" INT);
        CREATE TABLE "Orders" ("Order ID" TEXT PRIMARY KEY, "Visitor" TEXT, "Ordered At" TIMESTAMP, "Amount" NUMERIC);
        CREATE TABLE "Ad Costs" ("Session ID" TEXT PRIMARY KEY, "Spend" DOUBLE PRECISION);
    """, {
        "Web Sessions": sessions,
        "Orders": [(c[0], c[1], utc_text(c[2], c[3], 2), c[4]) for c in conversions],  # at +02:00
        "Ad Costs": costs,
    })
    visitor = {"user_id": "Visitor"}
    return {
        "session_sources": {"schema": "main", "table": "Web Sessions", "columns": {
            "session_id": "Session ID", **visitor, "event_date": "Day", "event_time": "Clock", "channel_name": "Channel",
            "holder_engagement": "Holder", "closer_engagement": "Closer", "impression_interaction": "Impression"}},
        "conversions": {"schema": "main", "table": "Orders", "columns": {
            "conv_id": "Order ID", **visitor, "conv_timestamp": "Ordered At", "revenue": "Amount"}},
        "session_costs": {"schema": "main", "table": "Ad Costs", "columns": {"session_id": "Session ID", "cost": "Spend"}},
    }


def views_with_time_zones(path, sessions, conversions, costs) -> dict:
    local = [(c[0], c[1], *utc_text(c[2], c[3], 5).split("T"), c[4]) for c in conversions]  # at +05:00
    _load(path, """
        CREATE TABLE sessions_loaded (session_id TEXT, user_id TEXT, event_date DATE, event_time TIME, channel_name TEXT,
            holder_engagement INT, closer_engagement INT, impression_interaction INT);
        CREATE TABLE orders_loaded (conv_id TEXT, user_id TEXT, conv_date DATE, conv_time TIME WITH TIME ZONE,
            revenue NUMERIC(12, 2));
        CREATE TABLE costs_loaded (session_id TEXT, cost REAL);
        CREATE VIEW v_sessions AS SELECT * FROM sessions_loaded;
        CREATE VIEW v_orders AS SELECT * FROM orders_loaded;
        CREATE VIEW v_costs AS SELECT session_id, cost FROM costs_loaded;
    """, {"sessions_loaded": sessions, "orders_loaded": local, "costs_loaded": costs})
    return {"session_sources": {"table": "v_sessions"}, "conversions": {"table": "v_orders"},
            "session_costs": {"table": "v_costs"}}


def datetime_dates_under_the_challenge_names(path, sessions, conversions, costs) -> dict:
    """The challenge's tables and columns, without the setting, the session date declared DATETIME
    (read as its date) and no index on user_id: the tables are read in rowid slices."""
    _load(path, """
        CREATE TABLE session_sources (session_id TEXT PRIMARY KEY, user_id TEXT, event_date DATETIME, event_time TEXT,
            channel_name TEXT, holder_engagement INTEGER, closer_engagement INTEGER, impression_interaction INTEGER);
        CREATE TABLE conversions (conv_id TEXT PRIMARY KEY, user_id TEXT, conv_date TEXT, conv_time TEXT, revenue REAL);
        CREATE TABLE session_costs (session_id TEXT PRIMARY KEY, cost REAL);
    """, {
        "session_sources": [(s[0], s[1], f"{s[2]} 00:00:00", *s[3:]) for s in sessions],
        "conversions": conversions,
        "session_costs": costs,
    })
    return {}


def renamed_in_an_attached_file(path, sessions, conversions, costs) -> dict:
    """The sources in a file of their own; the pipeline's file holds only its tables."""
    settings = renamed_tables_and_columns(path.parent / "raw sources.db", sessions, conversions, costs)
    sqlite3.connect(path).close()
    for spec in settings.values():
        spec.update(schema="raw", sqlite_file=str(path.parent / "raw sources.db"))
    return settings


CASES = {
    "bigint ids, one timestamp column": (bigint_ids_and_timestamps, True),
    "varchar ids, text dates, no keys": (varchar_ids_and_text_dates, False),
    "renamed tables and columns, timestamps at +02:00": (renamed_tables_and_columns, False),
    "views, time with time zone": (views_with_time_zones, False),
    "renamed tables in an attached file": (renamed_in_an_attached_file, False),
    "datetime dates under the challenge's names, no setting": (datetime_dates_under_the_challenge_names, False),
}


def _run(path, run_id: str) -> dict[str, list]:
    db = Database.connect_sqlite(str(path))
    try:
        schema.check_sources(db)
        out = path.parent / f"{path.stem}-out"
        client = FakeIhcClient()
        run_stages(db, run_id, RANGE["start_date"], RANGE["end_date"], client, max_journeys=7, output_dir=out)
        return {**result_tables(db.query), "issues as the report pages date them": issue_dates(db.conn),
                "csv": csv_bytes(out), "requests sent": payloads(client)}
    finally:
        db.close()


@pytest.mark.parametrize("case", list(CASES))
def test_a_warehouse_schema_gives_the_tables_of_the_challenge_schema(case, tmp_path, monkeypatch):
    build, int_ids = CASES[case]
    rows = source_rows(int_ids=int_ids)
    monkeypatch.delenv("ATTRIBUTION_SOURCES", raising=False)
    expected = _run(make_db(tmp_path / "challenge.db", *rows), "r")
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(build(tmp_path / "warehouse.db", *rows)))
    sources_file = tmp_path / "raw sources.db"
    before = sources_file.read_bytes() if sources_file.exists() else None
    got = _run(tmp_path / "warehouse.db", "r")
    if before is not None:
        assert sources_file.read_bytes() == before, "the attached sources are never written"
    assert all(expected.values()) and any(r == "no_sessions" for _, r, _ in expected["attribution_issues"])
    assert all(date for _, date in expected["issues as the report pages date them"])
    assert got == expected


def test_the_dag_reads_renamed_sources_in_an_attached_file(dag, tmp_path, monkeypatch):
    """The whole DAG through the connection (the provider's hook), against the local IHC server, on both schemas."""
    from ihc_attribution_dev.server.config import ServerConfig
    from ihc_attribution_dev.server.testing import serve

    rows = source_rows(seed=3, users=40)
    tables = {}
    with serve(ServerConfig(api_keys=("source-schemas-key",))) as url:
        host, port = url.removeprefix("http://").split(":")
        monkeypatch.setenv("AIRFLOW_CONN_IHC_API", json.dumps(
            {"conn_type": "ihc", "host": host, "port": int(port), "schema": "http", "password": "source-schemas-key",
             "extra": {"conv_type_id": "demo", "max_journeys_per_request": 20}}))
        for name in ("challenge", "warehouse"):
            path = tmp_path / f"{name}.db"
            if name == "challenge":
                make_db(path, *rows)
            else:
                monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(renamed_in_an_attached_file(path, *rows)))
            monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
            monkeypatch.setenv("ATTRIBUTION_OUTPUT_BASE_URL", str(tmp_path / f"{name}-out"))
            dagrun = dag.test(run_conf=RANGE)
            assert dagrun.state == "success", {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
            with sqlite3.connect(path) as conn:
                tables[name] = result_tables(lambda sql: conn.execute(sql).fetchall())
    assert tables["challenge"]["attribution_customer_journey"]
    assert tables["warehouse"] == tables["challenge"]
    csv = "channel_reporting_2024-01-02_2024-01-05.csv"
    assert (tmp_path / "warehouse-out" / csv).read_bytes() == (tmp_path / "challenge-out" / csv).read_bytes()


# --- what setup_tables says when the settings do not fit -----------------------------------------


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(renamed_tables_and_columns(path, *source_rows(users=5))))
    return path


def _check(path) -> None:
    db = Database.connect_sqlite(str(path))
    try:
        schema.check_sources(db)
    finally:
        db.close()


def test_a_missing_column_fails_naming_it_the_table_and_the_file(warehouse, monkeypatch):
    settings = json.loads(os.environ["ATTRIBUTION_SOURCES"])
    settings["conversions"]["columns"]["revenue"] = "Amount EUR"
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(settings))
    with pytest.raises(sources.SourceTableError) as info:
        _check(warehouse)
    message = str(info.value)
    assert "conversions (main.Orders)" in message and "no column Amount EUR" in message
    assert str(warehouse) in message and "\n" not in message


@pytest.mark.parametrize("key, value, where", [("table", "Ad costs 2024", "main.Ad costs 2024"),
                                               ("schema", "mian", "mian.Ad Costs")])
def test_a_missing_table_or_schema_fails_naming_where_it_looked(warehouse, monkeypatch, key, value, where):
    settings = json.loads(os.environ["ATTRIBUTION_SOURCES"])
    settings["session_costs"][key] = value
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(settings))
    with pytest.raises(sources.SourceTableError) as info:
        _check(warehouse)
    assert str(info.value).startswith(f"source table session_costs ({where}) cannot be read in SQLite file {warehouse}")


@pytest.mark.parametrize("setting, says", [
    ('{"sessions": {}}', "unknown source table"),
    ('{"conversions": {"columns": {"order_id": "id"}}}', "unknown order_id"),
    ('{"conversions": {"columns": {"conv_timestamp": "at", "conv_date": "day"}}}', "give one or the other"),
    ('{"conversions": {"table": ""}}', "non-empty names"),
    ('{"conversions": {"table": "orders?"}}', "holds \\?, % or NUL"),
    ("conversions=orders", "not valid JSON"),
])
def test_a_malformed_setting_fails_saying_what_is_wrong(warehouse, monkeypatch, setting, says):
    from ihc_attribution.errors import PermanentError  # not retried

    monkeypatch.setenv("ATTRIBUTION_SOURCES", setting)
    with pytest.raises(PermanentError, match=says):
        _check(warehouse)


def test_without_the_setting_the_queries_read_the_tables_by_their_plain_names(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTRIBUTION_SOURCES", raising=False)
    db = Database.connect_sqlite(str(make_db(tmp_path / "challenge.db", *source_rows(users=3))))
    try:
        assert [sources.relation(db, name) for name in sources.SOURCE_TABLES] == list(sources.SOURCE_TABLES)
    finally:
        db.close()


def test_renamed_columns_keep_the_users_indexes_and_the_advice_names_them(warehouse):
    """The subquery that renames the columns is flattened: the spend reads a day through the user's index."""
    from ihc_attribution import spend

    with sqlite3.connect(warehouse) as conn:
        conn.execute('CREATE INDEX "ix day" ON "Web Sessions" ("Day")')
    db = Database.connect_sqlite(str(warehouse))
    try:
        schema.ensure_schema(db)
        steps = [r[-1] for r in db.query("EXPLAIN QUERY PLAN " + spend.figures_sql(db, 3), ["2024-01-02"] * 3)]
        advice = schema.index_advice(db)
    finally:
        db.close()
    assert any(step.startswith("SEARCH main.Web Sessions USING INDEX ix day (Day=?)") for step in steps), steps
    assert [a.split(":")[0] for a in advice] == ['CREATE INDEX "ix_Web Sessions_Visitor" ON "main"."Web Sessions" ("Visitor")']


def test_setup_tables_fails_the_first_try_without_retries(dag, warehouse, monkeypatch):
    from ihc_attribution import tasks
    from ihc_attribution.errors import PermanentFailure

    settings = json.loads(os.environ["ATTRIBUTION_SOURCES"])
    settings["session_sources"]["columns"]["user_id"] = "visitor_id"  # (SQLite names are case-blind)
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(settings))
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    with pytest.raises(PermanentFailure) as info:  # one line, no traceback, not retried
        tasks.setup_tables({"params": RANGE, "run_id": "manual__typo"})
    message = str(info.value)
    assert "session_sources (main.Web Sessions)" in message and "has no column visitor_id" in message
    assert "not retried" in message and "\n" not in message


def test_the_report_pages_read_an_attached_sources_file_too(dag, tmp_path, monkeypatch):
    from ihc_attribution.report_ui import sources as pages

    rows = source_rows(users=20)
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(renamed_in_an_attached_file(path, *rows)))
    _run(path, "r")
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    db = pages.open_db()
    try:
        issues = pages.read_issues(db)
    finally:
        db.close()
    assert issues.latest and all(issue.conv_date for issue in issues.latest)


def test_a_missing_sources_file_fails_at_once_and_is_not_created(tmp_path, monkeypatch):
    from ihc_attribution.errors import PermanentError

    missing = tmp_path / "typo_sources.db"
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(
        {"conversions": {"schema": "raw", "table": "Orders", "sqlite_file": str(missing)}}))
    with pytest.raises(PermanentError, match=f"the SQLite file {missing} to attach as raw does not exist"):
        Database.connect_sqlite(str(make_db(tmp_path / "warehouse.db")))
    assert not missing.exists()


def test_an_attached_sources_file_refuses_writes_through_the_package_s_connection(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("ATTRIBUTION_SOURCES", json.dumps(renamed_in_an_attached_file(path, *source_rows(users=3))))
    db = Database.connect_sqlite(str(path))
    try:
        with db.transaction():
            assert db.scalar('SELECT COUNT(*) FROM raw."Orders"') > 0
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                db.execute('DELETE FROM raw."Orders"')
    finally:
        db.close()
