"""The same pipeline on PostgreSQL: the SQL is portable, and both backends give equal tables.

Uses the PostgreSQL server at 127.0.0.1:5432 (database ``test``), in a schema of its own that
is dropped afterwards; skipped when no server answers.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from ihc_attribution.db import Database
from tests.helpers import random_db, run_pipeline, run_stages

psycopg2 = pytest.importorskip("psycopg2")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test", "connect_timeout": 3}


@pytest.fixture
def pg(tmp_path):
    try:
        conn = psycopg2.connect(**PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    schema_name = "attribution_test_" + uuid.uuid4().hex[:10]
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema_name}")
        cur.execute(f"SET search_path TO {schema_name}")
    conn.commit()
    try:
        yield Database(conn)
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema_name} CASCADE")
        conn.commit()
        conn.close()


def _copy_sources(sqlite_path, db: Database) -> None:
    from ihc_attribution import schema

    with db.transaction():
        db.executescript(schema.challenge_ddl())  # the sources, as a user's loader makes them
    schema.ensure_schema(db)
    src = sqlite3.connect(sqlite_path)
    with db.transaction():
        db.executemany("INSERT INTO session_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       src.execute("SELECT * FROM session_sources").fetchall())
        db.executemany("INSERT INTO conversions VALUES (?, ?, ?, ?, ?)", src.execute("SELECT * FROM conversions").fetchall())
        db.executemany("INSERT INTO session_costs VALUES (?, ?)", src.execute("SELECT * FROM session_costs").fetchall())
    src.close()


def _tables(query):
    attribution = [tuple(r) for r in query("SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2")]
    report = [
        (ch, str(d), round(c, 6), round(i, 6), round(r, 6))
        for ch, d, c, i, r in query("SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting ORDER BY 1, 2")
    ]
    issues = [tuple(r) for r in query("SELECT conv_id, reason FROM attribution_issues ORDER BY 1, 2")]
    return attribution, report, issues


@pytest.mark.parametrize("lookback_days", [None, 4])
def test_postgres_gives_the_same_tables_as_sqlite(tmp_path, pg, lookback_days):
    lite = random_db(tmp_path / "lite.sqlite", seed=12)
    _copy_sources(lite, pg)
    for day in ("2024-01-03", "2024-01-01", "2024-01-02"):  # daily runs, out of order
        run_stages(pg, f"d{day}", day, day, max_journeys=3, lookback_days=lookback_days)
    summary = run_stages(pg, "range", "2024-01-01", "2024-01-10", max_journeys=3, lookback_days=lookback_days,
                         output_dir=tmp_path / "pg-out")
    run_pipeline(lite, "range", "2024-01-01", "2024-01-10", lookback_days=lookback_days, output_dir=tmp_path / "lite-out")

    with sqlite3.connect(lite) as conn:
        expected = _tables(lambda sql: conn.execute(sql).fetchall())
    got = _tables(pg.query)
    assert got == expected
    assert expected[0] and expected[1], "the comparison must not be vacuous"
    assert summary.attributed == len({c for c, _, _ in got[0]})
    name = "channel_reporting_2024-01-01_2024-01-10.csv"
    assert (tmp_path / "pg-out" / name).read_text() == (tmp_path / "lite-out" / name).read_text()


def test_bigint_ids_on_postgres_give_the_tables_of_integer_ids_on_sqlite(tmp_path, pg):
    """Warehouses key users and sessions with BIGINT: the package compares them as the source has them."""
    from tests.helpers import make_db, source_ddl

    sessions = [(10 + i, 7 if i < 3 else 8, f"2024-01-0{1 + i % 3}", f"1{i}:00:00", ["Email", "Direct"][i % 2])
                for i in range(6)]
    conversions = [(900, 7, "2024-01-03", "20:00:00", 50.0), (901, 8, "2024-01-03", "21:00:00", 80.0)]
    costs = [(10 + i, 1.25 * i) for i in range(6)]
    lite = make_db(tmp_path / "lite.sqlite", sessions, conversions, costs, ddl=source_ddl(id_type="INTEGER"))
    with pg.transaction():
        pg.executescript(source_ddl(id_type="BIGINT"))
        pg.executemany("INSERT INTO session_sources VALUES (?, ?, ?, ?, ?, 1, 1, 0)", sessions)
        pg.executemany("INSERT INTO conversions VALUES (?, ?, ?, ?, ?)", conversions)
        pg.executemany("INSERT INTO session_costs VALUES (?, ?)", costs)
    run_stages(pg, "range", "2024-01-01", "2024-01-03")
    run_pipeline(lite, "range", "2024-01-01", "2024-01-03")
    with sqlite3.connect(lite) as conn:
        expected = _tables(lambda sql: conn.execute(sql).fetchall())
    assert _tables(pg.query) == expected
    assert len(expected[0]) == 6 and {c for c, _, _ in expected[0]} == {"900", "901"}


def test_a_session_whose_datestyle_is_german_gives_the_tables_of_sqlite(tmp_path, pg):
    """Dates never depend on the DateStyle a database or role sets (psycopg 3 keeps the server's):
    the package sets ISO on its own session."""
    from ihc_attribution import schema

    with pg.conn.cursor() as cur:
        cur.execute("SET DateStyle TO German, DMY")
        cur.execute("SELECT CAST(DATE '2024-01-14' AS TEXT)")
        assert cur.fetchone()[0] == "14.01.2024"
    pg.conn.commit()
    db = Database(pg.conn)  # as the task opens it
    lite = random_db(tmp_path / "lite.sqlite", seed=3)
    with db.transaction():
        db.executescript(schema.challenge_ddl())
    _copy_sources(lite, db)
    summary = run_stages(db, "range", "2024-01-01", "2024-01-10")
    run_pipeline(lite, "range", "2024-01-01", "2024-01-10")
    with sqlite3.connect(lite) as conn:
        expected = _tables(lambda sql: conn.execute(sql).fetchall())
    assert _tables(db.query) == expected and summary.attributed > 0


VALUES = [0.1, 0.3, 2.675, 1.5e-6, 2.5e-6, -2.5e-6, -0.5e-6, 3.5e-6, 1e-7, 12345678.1234565, -7.0000005, 0.0, -0.0]


@pytest.mark.parametrize("decimals", [2, 4, 6])
def test_fixed_point_units_are_the_same_integers_on_both_engines(pg, decimals):
    """Ties included: PostgreSQL rounds a double by SQLite's arithmetic, not half to even."""
    lite = Database(sqlite3.connect(":memory:"))
    for db in (lite, pg):
        db.execute("CREATE TEMP TABLE v (i INT, x DOUBLE PRECISION)")
        db.executemany("INSERT INTO v VALUES (?, ?)", list(enumerate(VALUES)))
    sql = "SELECT i, {} FROM v ORDER BY i"
    got_lite = lite.query(sql.format(lite.units("x", decimals)))
    got_pg = pg.query(sql.format(pg.units("x", decimals)))
    assert got_pg == got_lite
    assert dict(got_lite)[VALUES.index(2.5e-6)] == (3 if decimals == 6 else 0), "half away from zero"


@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_a_long_history_is_cut_before_staging_on_postgres_with_the_same_tables(tmp_path, pg, policy):
    from tests.ihc_attribution.test_long_journeys import LIMIT, LONG_CONVERSIONS, long_history_db, run_both_ways

    lite = long_history_db(tmp_path / "long.sqlite", sessions=4_000)
    _copy_sources(lite, pg)
    staging = ("attribution_stg_conversions", "attribution_stg_sessions", "attribution_stg_requests",
               "attribution_stg_request_journeys", "attribution_stg_results", "attribution_stg_journey_keys",
               "attribution_stg_answered", "attribution_stg_issues", "attribution_stg_report_dates")

    def db_of(cut):  # the same database, its results and staging emptied between the two runs
        with pg.transaction():
            for table in ("attribution_customer_journey", "channel_reporting", "attribution_credit",
                          "attribution_issues", *staging):
                pg.execute(f"DELETE FROM {table}")
        return pg

    (whole_summary, whole_staged, whole_sent, whole), (summary, staged, sent, cut) = run_both_ways(db_of, policy, None)
    assert staged <= (len(LONG_CONVERSIONS) + 1) * LIMIT < whole_staged
    assert (sent, cut, summary) == (whole_sent, whole, whole_summary)
def test_an_error_in_the_reads_before_a_stage_s_transaction_is_the_error_raised(tmp_path, pg):
    """PostgreSQL aborts the implicit transaction of the reads: the clean-up must not hide the error."""
    from ihc_attribution import journeys, schema
    from ihc_attribution.daterange import range_from_params

    lite = random_db(tmp_path / "lite.sqlite", seed=12)
    _copy_sources(lite, pg)
    schema.ensure_schema(pg)
    pg.execute("DROP TABLE attribution_journeys")  # what the extraction's first read needs
    pg.conn.commit()
    with pytest.raises(psycopg2.errors.UndefinedTable):
        journeys.extract_journeys(pg, "r1", range_from_params({"start_date": "2024-01-01", "end_date": "2024-01-01"}))
    assert pg.scalar("SELECT 1") == 1, "the connection is usable again"
