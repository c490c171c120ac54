"""The source totals per (session date, channel) always equal a recomputation from the sources.

They are computed in one pass the first time and then kept in step by triggers on the source
tables: whatever writes to ``session_sources`` or ``session_costs`` (inserts, updates of any
column, deletes, a table dropped and created again), the next refresh gives the figures of the
tables as they are, and recomputes only the dates that changed.
"""

from __future__ import annotations

import random
import re
import sqlite3

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ihc_attribution import schema, session_totals, sqlite_processes
from ihc_attribution.db import Database
from tests.helpers import make_db, source_ddl

SESSIONS = [
    ("s1", "u1", "2024-01-08", "10:00:00", "Paid Search Brand"),
    ("s2", "u1", "2024-01-09", "10:00:00", "FB & IG Ads"),
    ("s3", "u2", "2024-01-09", "11:00:00", "FB & IG Ads"),
    ("s4", "u3", "2024-01-10", "12:00:00", "Organic Traffic"),
    ("s5", "u3", "2024-01-10", "13:00:00", None),
    ("s6", "u4", "2024-02-30", "09:00:00", "Referral"),  # not a date: counted, on no report date
]
COSTS = [("s1", 2.5), ("s2", 1.25), ("s3", None), ("s4", -1.0), ("s6", 3.0), ("gone", 9.0)]
FIGURES = ["session_rows", "sessions", "cost_rows", "null_costs", "negative_costs", "cost"]


def recomputed(conn: sqlite3.Connection) -> dict[tuple, tuple]:
    """The totals from the source tables, with pandas (distinct rows, as a table without keys may repeat one)."""
    s = pd.read_sql("SELECT DISTINCT session_id, event_date, channel_name FROM session_sources", conn)
    c = pd.read_sql("SELECT DISTINCT session_id, cost FROM session_costs", conn)
    c["has_row"] = 1
    m = s.merge(c, on="session_id", how="left")
    m["has_row"] = m["has_row"].fillna(0).where(m["session_id"].notna(), 0)
    m["date"] = m["event_date"].map(lambda v: None if pd.isna(v) else str(v))
    out = {}
    for (date, channel), g in m.groupby(["date", "channel_name"], dropna=False):
        key = (None if pd.isna(date) else date, None if pd.isna(channel) else channel)
        out[key] = (
            len(g),
            int(g["session_id"].notna().sum()),
            int(g["has_row"].sum()),
            int(((g["has_row"] == 1) & g["cost"].isna()).sum()),
            int((g["cost"] < 0).sum()),
            round(float(g["cost"].fillna(0).sum()), 9),
        )
    return out


def stored(conn: sqlite3.Connection) -> dict[tuple, tuple]:
    rows = conn.execute(f"SELECT date, channel_name, {', '.join(FIGURES)} FROM {session_totals.TOTALS}").fetchall()
    out = {(d, ch): (*map(int, rest[:5]), round(float(rest[5]), 9)) for d, ch, *rest in rows}
    assert len(out) == len(rows), "one row per (date, channel)"
    return out


@pytest.fixture
def db(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, [], COSTS)
    database = Database.connect_sqlite(str(path))
    schema.ensure_schema(database)
    yield database
    database.close()


def refreshed(db: Database) -> session_totals.Refresh:
    result = session_totals.refresh(db)
    assert stored(db.conn) == recomputed(db.conn)
    return result


def refreshed_after(db: Database, statements: list[str]) -> session_totals.Refresh:
    """Refresh, run ``statements``, and refresh again: what the second refresh did."""
    refreshed(db)
    for sql in statements:
        db.execute(sql)
    return refreshed(db)


def test_the_first_refresh_computes_everything_and_the_next_one_nothing(db):
    first = refreshed(db)
    assert first.everything
    assert stored(db.conn)[("2024-01-09", "FB & IG Ads")] == (2, 2, 2, 1, 0, 1.25)
    assert stored(db.conn)[("2024-01-10", None)] == (1, 1, 0, 0, 0, 0.0)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    second = refreshed(db)
    db.conn.set_trace_callback(None)
    assert not second.everything and second.dates == 0
    assert not [sql for sql in statements if "session_sources" in sql and "attribution_session_totals" in sql]


_COLUMNS = ("session_id, user_id, event_date, event_time, channel_name, holder_engagement, closer_engagement, "
            "impression_interaction")
CHANGES = {
    "a session inserted": (
        ["INSERT INTO session_sources VALUES ('n1', 'u9', '2024-01-11', '10:00:00', 'Referral', 0, 0, 0)"], 1,
    ),
    "a cost updated": (["UPDATE session_costs SET cost = 7.5 WHERE session_id = 's2'"], 1),
    "a cost row deleted": (["DELETE FROM session_costs WHERE session_id = 's1'"], 1),
    "a cost row inserted": (["INSERT INTO session_costs VALUES ('s5', 4.0)"], 1),
    "a session moved to another date": (["UPDATE session_sources SET event_date = '2024-01-12' WHERE session_id = 's3'"], 2),
    "a session replaced through its rowid": (
        [f"INSERT OR REPLACE INTO session_sources (rowid, {_COLUMNS}) VALUES "
         "(1, 'zz', 'u9', '2024-01-09', '10:00:00', 'A', 0, 0, 0)"], 2,
    ),
    "a session's rowid moved onto another's": (["UPDATE OR REPLACE session_sources SET rowid = 1 WHERE session_id = 's4'"], 2),
    "a session's channel changed": (["UPDATE session_sources SET channel_name = 'Referral' WHERE session_id = 's4'"], 1),
    "a session deleted, its cost row kept": (["DELETE FROM session_sources WHERE session_id = 's2'"], 1),
    "a cost row before its session": (
        [
            "INSERT INTO session_costs VALUES ('late', 5.0)",
            "INSERT INTO session_sources VALUES ('late', 'u9', '2024-01-13', '10:00:00', 'Referral', 0, 0, 0)",
        ],
        1,
    ),
    "a cost row moved to another session": (["UPDATE session_costs SET session_id = 's5' WHERE session_id = 's1'"], 2),
    "many rows of one day": (
        [
            "INSERT INTO session_sources SELECT 'x' || session_id, user_id, '2024-01-09', event_time, channel_name, "
            "holder_engagement, closer_engagement, impression_interaction FROM session_sources"
        ],
        1,
    ),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_recomputes_only_the_dates_it_touches(db, name):
    statements, dates = CHANGES[name]
    result = refreshed_after(db, statements)
    assert not result.everything and result.dates == dates


def test_a_session_without_a_date_recomputes_everything(db):
    refreshed(db)
    db.execute("INSERT INTO session_sources VALUES ('nd', 'u9', NULL, '10:00:00', 'Referral', 0, 0, 0)")
    assert refreshed(db).everything
    assert stored(db.conn)[(None, "Referral")][:2] == (1, 1)


def test_a_source_table_created_again_recomputes_everything(db):
    refreshed(db)
    db.execute("DROP TABLE session_costs")
    db.execute("CREATE TABLE session_costs (session_id TEXT PRIMARY KEY, cost FLOAT)")
    db.execute("INSERT INTO session_costs VALUES ('s4', 8.0)")
    assert refreshed(db).everything
    db.execute("UPDATE session_costs SET cost = 1.0")
    assert refreshed(db).dates == 1


def test_a_failed_refresh_keeps_the_recorded_dates(db, monkeypatch):
    refreshed(db)
    db.execute("UPDATE session_costs SET cost = 7.5 WHERE session_id = 's2'")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(session_totals, "_recompute", broken)
    with pytest.raises(RuntimeError):
        session_totals.refresh(db)
    monkeypatch.undo()
    assert refreshed(db).dates == 1


def test_sources_without_keys_are_recomputed_every_time_over_distinct_rows(tmp_path):
    sessions = SESSIONS + [SESSIONS[1], SESSIONS[1]]
    costs = COSTS + [("s2", 1.25), ("s2", 0.5)]
    path = make_db(tmp_path / "db.sqlite", sessions, [], costs, ddl=source_ddl(keys=False))
    db = Database.connect_sqlite(str(path))
    schema.ensure_schema(db)
    assert refreshed(db).everything
    # s2 once, with its two different cost rows
    assert stored(db.conn)[("2024-01-09", "FB & IG Ads")][5] == pytest.approx(1.75)
    assert refreshed(db).everything
    db.close()


# Random writes of any kind, in any order: the totals stay equal to the recomputation.
_IDS = st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6", "n1", "n2"])
_DATES = st.sampled_from(["2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11", "2024-01-12", "2024-01-13"])
_WRITES = st.one_of(
    st.tuples(st.just("INSERT OR REPLACE INTO session_sources VALUES (?, 'u', ?, '10:00:00', ?, 0, 0, 0)"),
              st.tuples(_IDS, _DATES, st.sampled_from(["A", "B", None]))),
    st.tuples(st.just("INSERT OR REPLACE INTO session_costs VALUES (?, ?)"),
              st.tuples(_IDS, st.one_of(st.none(), st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 2))))),
    st.tuples(st.just("UPDATE session_sources SET event_date = ? WHERE session_id = ?"), st.tuples(_DATES, _IDS)),
    st.tuples(st.just("DELETE FROM session_sources WHERE session_id = ?"), st.tuples(_IDS)),
    st.tuples(st.just("DELETE FROM session_costs WHERE session_id = ?"), st.tuples(_IDS)),
    # Rowids given or changed: a row of a new date may then lie at or below the last refresh's largest.
    # A REPLACE over a taken rowid deletes the row holding it, without firing delete triggers.
    st.tuples(st.sampled_from(["INSERT OR IGNORE", "INSERT OR REPLACE"]).map(
        lambda verb: f"{verb} INTO session_sources (rowid, session_id, user_id, event_date, event_time, "
                     "channel_name, holder_engagement, closer_engagement, impression_interaction) "
                     "VALUES (?, ?, 'u', ?, '10:00:00', 'A', 0, 0, 0)"),
              st.tuples(st.integers(-2, 12), _IDS, _DATES)),
    st.tuples(st.sampled_from(["UPDATE OR IGNORE", "UPDATE OR REPLACE"]).map(
        lambda verb: f"{verb} session_sources SET rowid = ? WHERE session_id = ?"),
              st.tuples(st.integers(-2, 12), _IDS)),
)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(_WRITES, max_size=6), min_size=1, max_size=4))
def test_random_writes_keep_the_totals_equal_to_a_recomputation(tmp_path_factory, batches):
    path = make_db(tmp_path_factory.mktemp("totals") / "db.sqlite", SESSIONS[:4], [], COSTS[:4])
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        refreshed(db)
        for batch in batches:
            for sql, params in batch:
                db.execute(sql, params)
            refreshed(db)
    finally:
        db.close()


# --- PostgreSQL: statement triggers with transition tables -------------------------------------


@pytest.fixture
def pg(tmp_path):
    """A database of this test only on the machine's PostgreSQL, with the sources and the schema."""
    import uuid

    psycopg2 = pytest.importorskip("psycopg2")
    params = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "connect_timeout": 3}
    try:
        admin = psycopg2.connect(dbname="postgres", **params)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    admin.autocommit = True
    name = "ihc_totals_test_" + uuid.uuid4().hex[:10]
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn = psycopg2.connect(dbname=name, **params)
    db = Database(conn)
    try:
        with db.transaction():
            db.executescript(schema.challenge_ddl())
            for row in SESSIONS:
                if row[2] != "2024-02-30":  # a DATE column refuses it
                    db.execute("INSERT INTO session_sources VALUES (?, ?, ?, ?, ?, 0, 0, 0)", row)
            db.executemany("INSERT INTO session_costs VALUES (?, ?)", COSTS)
        schema.ensure_schema(db)
        yield db
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def write(db: Database, sql: str) -> None:
    """One statement in a transaction of its own, as a loader commits it."""
    with db.transaction():
        db.execute(sql)


def pg_refreshed(db: Database) -> session_totals.Refresh:
    result = session_totals.refresh(db)
    got = {
        (d, ch): (*map(int, rest[:5]), round(float(rest[5]), 9))
        for d, ch, *rest in db.query(f"SELECT date, channel_name, {', '.join(FIGURES)} FROM {session_totals.TOTALS}")
    }
    s = db.query("SELECT session_id, CAST(event_date AS TEXT), channel_name FROM session_sources")
    c = dict(db.query("SELECT session_id, cost FROM session_costs"))
    want: dict[tuple, list] = {}
    for sid, date, channel in s:
        f = want.setdefault((date, channel), [0, 0, 0, 0, 0, 0.0])
        f[0] += 1
        f[1] += sid is not None
        if sid in c:
            f[2] += 1
            f[3] += c[sid] is None
            f[4] += c[sid] is not None and c[sid] < 0
            f[5] += c[sid] or 0.0
    assert got == {k: (*v[:5], round(v[5], 9)) for k, v in want.items()}
    return result


def test_postgres_triggers_record_the_dates_of_every_kind_of_write(pg):
    assert pg_refreshed(pg).everything
    assert pg_refreshed(pg).dates == 0
    write(pg, "UPDATE session_costs SET cost = 7.5 WHERE session_id IN ('s2', 's3')")
    assert pg_refreshed(pg).dates == 1
    write(pg, "UPDATE session_sources SET event_date = '2024-01-12' WHERE session_id = 's1'")
    assert pg_refreshed(pg).dates == 2
    write(pg,
        "INSERT INTO session_sources VALUES ('n1', 'u9', '2024-01-11', '10:00:00', 'A', 0, 0, 0), "
        "('n2', 'u9', '2024-01-13', '10:00:00', 'A', 0, 0, 0)"
    )
    write(pg, "INSERT INTO session_costs VALUES ('n1', 1.0) ON CONFLICT (session_id) DO UPDATE SET cost = 2.0")
    write(pg, "INSERT INTO session_costs VALUES ('n1', 1.0) ON CONFLICT (session_id) DO UPDATE SET cost = 3.0")
    assert pg_refreshed(pg).dates == 2
    write(pg, "DELETE FROM session_sources WHERE session_id = 's4'")
    write(pg, "DELETE FROM session_costs WHERE session_id = 'n1'")
    assert pg_refreshed(pg).dates == 2
    write(pg, "TRUNCATE session_costs")
    assert pg_refreshed(pg).everything


def test_postgres_loaders_need_no_rights_on_the_pipeline_s_tables(pg):
    """The trigger function runs with its owner's rights: a role that may only write the sources can."""
    import uuid

    session_totals.refresh(pg)
    role = "ihc_loader_" + uuid.uuid4().hex[:8]
    write(pg, f"CREATE ROLE {role}")
    try:
        write(pg, f"GRANT INSERT, UPDATE, DELETE, SELECT ON session_sources, session_costs TO {role}")
        write(pg, f"SET ROLE {role}")
        write(pg, "INSERT INTO session_sources VALUES ('r1', 'u9', '2024-01-14', '10:00:00', 'A', 0, 0, 0)")
        write(pg, "RESET ROLE")
        assert pg_refreshed(pg).dates == 1
    finally:
        write(pg, "RESET ROLE")
        write(pg, f"REVOKE ALL ON session_sources, session_costs FROM {role}")
        write(pg, f"DROP ROLE {role}")


def test_with_triggers_turned_off_the_sources_carry_none_and_every_refresh_recomputes(db, monkeypatch):
    refreshed(db)
    assert session_totals._existing_triggers(db)
    monkeypatch.setenv("ATTRIBUTION_SOURCE_TRIGGERS", "0")
    assert refreshed(db).everything
    assert not session_totals._existing_triggers(db)
    db.execute("UPDATE session_costs SET cost = 7.5 WHERE session_id = 's2'")
    assert refreshed(db).everything
    monkeypatch.setenv("ATTRIBUTION_SOURCE_TRIGGERS", "maybe")
    with pytest.raises(ValueError, match="ATTRIBUTION_SOURCE_TRIGGERS"):
        session_totals.refresh(db)


def test_integer_session_ids_are_keys_and_kept_in_step(tmp_path):
    path = make_db(tmp_path / "db.sqlite", [(1, "u1", "2024-01-08", "10:00:00", "A")], [], [(1, 2.0)],
                   ddl=source_ddl(id_type="INTEGER"))
    db = Database.connect_sqlite(str(path))
    schema.ensure_schema(db)
    assert refreshed(db).everything
    db.execute("INSERT INTO session_costs VALUES (1, 3.0) ON CONFLICT (session_id) DO UPDATE SET cost = 3.0")
    assert refreshed(db).dates == 1
    db.close()


def test_report_rows_of_a_date_whose_sessions_changed_are_rebuilt_by_the_next_run(tmp_path):
    """A credited session deleted from the source: no journey finds its date any more, yet the
    next run (another run id, which knows nothing of the first run's dates) rebuilds that date."""
    from tests.helpers import expected_report, read_table, run_pipeline

    sessions = [
        ("s1", "u1", "1996-02-26", "00:00:00", "Direct Traffic"),
        ("s2", "u1", "1996-02-27", "00:00:00", "Direct Traffic"),
        ("s3", "u2", "1996-02-27", "00:00:00", "Referral"),
    ]
    conversions = [("c1", "u1", "1996-02-27", "10:00:00", 10.0), ("c2", "u2", "1996-02-27", "10:00:00", 5.0)]
    path = make_db(tmp_path / "db.sqlite", sessions, conversions, [("s1", 1.5), ("s3", 2.0)])
    run_pipeline(path, "r1", "1996-02-27", "1996-02-27")
    assert set(read_table(path, "channel_reporting")["date"]) == {"1996-02-26", "1996-02-27"}
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM session_sources WHERE session_id = 's1'")
        conn.execute("UPDATE session_costs SET cost = 4.0 WHERE session_id = 's3'")
    run_pipeline(path, "manual__again", "1996-02-27", "1996-02-27")
    got = read_table(path, "channel_reporting").sort_values(["channel_name", "date"]).reset_index(drop=True)
    want = expected_report(path).sort_values(["channel_name", "date"]).reset_index(drop=True)
    assert list(zip(got["channel_name"], got["date"])) == list(zip(want["channel_name"], want["date"]))
    assert got["cost"].tolist() == pytest.approx(want["cost"].tolist())
    assert got["ihc"].tolist() == pytest.approx(want["ihc"].tolist())


def test_a_date_recomputed_alone_gives_the_figures_of_the_full_pass_bit_for_bit(tmp_path):
    # Enough rows that SQLite's sorter spills to sorted runs and merges them: the order in which
    # a group's costs reach SUM must not depend on how the rows were split (a float sum differs
    # in its last bits otherwise, and a date recomputed later would look changed).
    rng = random.Random(7)
    n = 120_000
    sessions = [(f"s{i:06d}", f"u{i % 5000}", f"2024-01-{1 + i % 3:02d}", "10:00:00", "Ch") for i in range(n)]
    costs = [(f"s{i:06d}", rng.uniform(0, 3) / 7) for i in rng.sample(range(n), n)]
    path = make_db(tmp_path / "db.sqlite", sessions, [], costs)
    db = Database.connect_sqlite(str(path))
    db.execute("PRAGMA cache_size = 64")  # small runs: many of them to merge, as on a large database
    try:
        schema.ensure_schema(db)
        assert session_totals.refresh(db).everything
        full = db.query(f"SELECT date, channel_name, cost FROM {session_totals.TOTALS} ORDER BY date")
        db.execute(f"DELETE FROM {session_totals.OUTDATED}")
        with db.transaction():
            db.execute("UPDATE session_sources SET channel_name = channel_name WHERE session_id = 's000001'")
        assert session_totals.refresh(db).dates == 1
        assert db.query(f"SELECT date, channel_name, cost FROM {session_totals.TOTALS} ORDER BY date") == full
        assert db.query(f"SELECT date FROM {session_totals.OUTDATED}") == [], "no date changed"
    finally:
        db.close()


# --- everything, over several processes ---------------------------------------------------------


def _raw_totals(db: Database) -> list[tuple]:
    """The stored totals row for row, in their stored order, with every value's type and bytes."""
    return db.query(
        f"SELECT typeof(date), hex(date), typeof(channel_name), hex(channel_name), session_rows, sessions, "
        f"cost_rows, null_costs, negative_costs, cost, typeof(cost) FROM {session_totals.TOTALS} ORDER BY rowid"
    )


def _odd_values_db(path, encoding: str = "UTF-8") -> Database:
    """Sessions over many days, with a NULL, malformed and impossible date, channels that are not
    valid UTF-8, hold a NUL or are a blob, NULL and negative costs, float costs that round."""
    if encoding != "UTF-8":  # the encoding of a database is set before its first table
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA encoding = '{encoding}'")
        conn.executescript("CREATE TABLE encoded (x); DROP TABLE encoded;")
        conn.close()
    rng = random.Random(11)
    channels = ["Paid Search Brand", "FB & IG Ads", "Email", None, ""]
    dates = [f"2024-{m:02d}-{d:02d}" for m in (1, 2) for d in range(1, 29)] + [None, "2024-02-30", "yesterday", "9"]
    sessions = [
        (f"s{i:05d}", f"u{i % 700}", rng.choice(dates), "10:00:00", rng.choice(channels)) for i in range(6000)
    ]
    costs = [(f"s{i:05d}", rng.choice([None, -0.5, rng.uniform(0, 4) / 3])) for i in rng.sample(range(6000), 5000)]
    make_db(path, sessions, [], costs)
    db = Database.connect_sqlite(str(path))
    db.execute("UPDATE session_sources SET channel_name = CAST(x'ff41' AS TEXT) WHERE session_id < 's00100'")
    db.execute("UPDATE session_sources SET channel_name = CAST(x'41004200' AS TEXT) WHERE session_id LIKE 's002%'")
    db.execute("UPDATE session_sources SET channel_name = x'0102' WHERE session_id LIKE 's003%'")
    db.execute("UPDATE session_sources SET event_date = NULL WHERE session_id LIKE 's004%'")
    schema.ensure_schema(db)
    return db


@pytest.mark.parametrize(("processes", "encoding"), [(2, "UTF-8"), (3, "UTF-8"), (2, "UTF-16le"), (2, "UTF-16be")])
def test_everything_computed_in_processes_is_the_single_statement_s_table_row_for_row(
    tmp_path, monkeypatch, processes, encoding
):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    db = _odd_values_db(tmp_path / "db.sqlite", encoding)
    assert db.scalar("PRAGMA encoding") == encoding
    try:
        single = session_totals.refresh(db, processes=1)
        assert single.everything and single.processes == 1
        want = _raw_totals(db)
        with db.transaction():
            db.execute(f"DELETE FROM {session_totals.OUTDATED}")  # every date is new to the first refresh
            db.execute(f"DROP TRIGGER {session_totals._PREFIX}sessions_insert")  # everything again
        split = session_totals.refresh(db, processes=processes)
        assert split.everything and split.processes == processes
        assert _raw_totals(db) == want
        assert stored(db.conn) == recomputed(db.conn)
        assert db.query(f"SELECT date FROM {session_totals.OUTDATED}") == [], "no date changed"
    finally:
        db.close()


def test_sources_without_keys_are_computed_in_processes_over_distinct_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    sessions = SESSIONS + SESSIONS[:2]
    costs = COSTS + COSTS[:1] + [("s2", 4.0)]
    path = make_db(tmp_path / "db.sqlite", sessions, [], costs, ddl=source_ddl(keys=False))
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        want = session_totals.refresh(db, processes=1)
        single = _raw_totals(db)
        split = session_totals.refresh(db, processes=2)
        assert (want.processes, split.processes) == (1, 2)
        assert _raw_totals(db) == single
        assert stored(db.conn) == recomputed(db.conn)
    finally:
        db.close()


def test_float_sums_of_many_rows_are_the_same_to_the_bit_in_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    rng = random.Random(3)
    n = 60_000
    sessions = [(f"s{i:06d}", f"u{i % 900}", f"2024-01-{1 + i % 9:02d}", "10:00:00", f"C{i % 4}") for i in range(n)]
    costs = [(f"s{i:06d}", rng.uniform(0, 3) / 7) for i in rng.sample(range(n), n)]
    path = make_db(tmp_path / "db.sqlite", sessions, [], costs)
    db = Database.connect_sqlite(str(path))
    db.execute("PRAGMA cache_size = 64")  # the sorter spills and merges, as on a large database
    try:
        schema.ensure_schema(db)
        with db.transaction():
            assert session_totals._recompute(db) == 1
        single = _raw_totals(db)
        with db.transaction():
            assert session_totals._recompute(db, processes=2) == 2
        assert _raw_totals(db) == single
    finally:
        db.close()


def test_processes_do_not_take_part_once_the_transaction_has_written(db, monkeypatch):
    # They would see the sources without the transaction's change.
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    with db.transaction():
        db.execute("INSERT INTO session_sources VALUES ('s9', 'u9', '2024-01-08', '11:00:00', 'Email', 1, 0, 0)")
        result = session_totals.refresh(db, processes=2)
    assert result.everything and result.processes == 1
    assert stored(db.conn) == recomputed(db.conn)
    assert ("2024-01-08", "Email") in stored(db.conn)


def test_small_tables_and_databases_without_wal_are_computed_in_one_process(tmp_path, monkeypatch):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, [], COSTS)
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        assert session_totals.refresh(db, processes=2).processes == 1, "below sqlite_processes.MIN_ROWS"
        monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
        db.execute("PRAGMA journal_mode = DELETE")
        with db.transaction():
            db.execute(f"DROP TRIGGER {session_totals._PREFIX}sessions_insert")
        assert session_totals.refresh(db, processes=2).processes == 1, "readers would wait for the writer"
        assert stored(db.conn) == recomputed(db.conn)
    finally:
        db.close()
    memory = Database(sqlite3.connect(":memory:"))
    memory.executescript(source_ddl())
    schema.ensure_schema(memory)
    assert session_totals.refresh(memory, processes=2).processes == 1, "no file for other processes"


def test_a_failing_process_leaves_the_work_to_the_single_statement(db, monkeypatch, caplog):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    monkeypatch.setattr(sqlite_processes, "WORKER", "import sys; sys.exit('cannot read the database')")
    result = session_totals.refresh(db, processes=2)
    assert result.everything and result.processes == 1
    assert stored(db.conn) == recomputed(db.conn)
    assert "cannot read the database" in caplog.text


@pytest.mark.parametrize(("value", "expected"), [("", 2), ("1", 1), (" 3 ", 3)])
def test_the_processes_setting(monkeypatch, value, expected):
    monkeypatch.setattr(sqlite_processes.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv(sqlite_processes.PROCESSES_VARIABLE, value)
    assert sqlite_processes.processes_setting() == expected


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_wrong_processes_setting_is_an_error_naming_it(monkeypatch, value):
    monkeypatch.setenv(sqlite_processes.PROCESSES_VARIABLE, value)
    with pytest.raises(ValueError, match=sqlite_processes.PROCESSES_VARIABLE):
        sqlite_processes.processes_setting()


# --- dates computed from the rows added since the last refresh ---------------------------------


def _full_pass(db: Database) -> list[tuple]:
    """The single statement over the whole tables, each value with its type, in group order."""
    figures = session_totals._FIGURES.format(sessions="session_sources", costs="session_costs", where="")
    return db.query(f"SELECT date, channel_name, session_rows, sessions, cost_rows, null_costs, negative_costs, "
                    f"cost, typeof(cost) FROM ({figures}) ORDER BY date, channel_name")


def _stored_raw(db: Database) -> list[tuple]:
    return db.query(f"SELECT date, channel_name, session_rows, sessions, cost_rows, null_costs, negative_costs, "
                    f"cost, typeof(cost) FROM {session_totals.TOTALS} ORDER BY date, channel_name")


def test_a_new_day_is_computed_from_its_new_rows_alone_and_to_the_bit(tmp_path):
    rng = random.Random(3)
    n = 60_000
    sessions = [(f"s{i:06d}", f"u{i % 900}", f"2024-01-{1 + i % 3:02d}", "10:00:00", f"Ch{i % 4}") for i in range(n)]
    costs = [(f"s{i:06d}", rng.uniform(0, 3) / 7) for i in rng.sample(range(n), n - 500)]
    path = make_db(tmp_path / "db.sqlite", sessions, [], costs)
    db = Database.connect_sqlite(str(path))
    db.execute("PRAGMA cache_size = 64")  # many sorted runs to merge, as on a large database
    try:
        schema.ensure_schema(db)
        assert session_totals.refresh(db).everything
        # The next day's sessions and costs, and one more session of a day already counted.
        with db.transaction():
            db.executemany(
                "INSERT INTO session_sources VALUES (?, ?, '2024-01-04', '09:00:00', ?, 0, 0, 0)",
                [(f"d{i:05d}", f"u{i % 900}", f"Ch{i % 5}") for i in range(20_000)],
            )
            db.executemany("INSERT INTO session_costs VALUES (?, ?)",
                           [(f"d{i:05d}", rng.choice([None, -0.25, rng.uniform(0, 3) / 7])) for i in range(19_000)])
            db.execute("INSERT INTO session_sources VALUES ('late', 'u1', '2024-01-02', '09:00:00', 'Ch1', 0, 0, 0)")
        statements: list[str] = []
        db.conn.set_trace_callback(statements.append)
        result = session_totals.refresh(db)
        db.conn.set_trace_callback(None)
        assert (result.everything, result.dates, result.from_new_rows) == (False, 2, 1)
        assert _stored_raw(db) == _full_pass(db)
        # The new day read only the rows above the last refresh's largest rowid, by their rowids.
        (new_day,) = [sql for sql in statements if "s.rowid >" in sql]
        db.execute(f"CREATE TEMP TABLE {session_totals.CLAIMED} (date TEXT PRIMARY KEY, new_rows_only INT NOT NULL)")
        plan = [row[-1] for row in db.query("EXPLAIN QUERY PLAN " + new_day[new_day.index("SELECT"):])]
        assert any(step.startswith("SEARCH s USING INTEGER PRIMARY KEY (rowid>?)") for step in plan), plan
    finally:
        db.close()


_NEW_ROW = "INSERT INTO session_sources VALUES ('n1', 'u9', '2024-01-20', '10:00:00', 'Referral', 0, 0, 0)"
# Writes after which the sessions of the new date 2024-01-20 may not all lie above the last
# refresh's largest rowid (6 in the fixture): that date is then computed from the whole table.
BELOW_THE_WATERMARK = {  # the writes, and the channel of the new date's one session
    "a row given a rowid below it": ([
        f"INSERT INTO session_sources (rowid, {_COLUMNS}) VALUES (0, 'n0', 'u9', '2024-01-20', '10:00:00', 'A', 0, 0, 0)"
    ], "A"),
    "a rowid freed at the top and given again": (["DELETE FROM session_sources WHERE session_id = 's6'", _NEW_ROW], "Referral"),
    "an earlier session moved to the new date": (
        ["UPDATE session_sources SET event_date = '2024-01-20' WHERE session_id = 's1'"], "Paid Search Brand",
    ),
    "a new session's rowid moved below it": (
        [_NEW_ROW, "UPDATE session_sources SET rowid = -1 WHERE session_id = 'n1'"], "Referral",
    ),
}


@pytest.mark.parametrize("name", list(BELOW_THE_WATERMARK))
def test_a_new_date_with_rows_that_may_lie_below_the_last_refresh_s_rowids_is_computed_in_full(db, name):
    statements, channel = BELOW_THE_WATERMARK[name]
    result = refreshed_after(db, statements)  # the figures equal a recomputation, the new date's included
    assert not result.everything and result.from_new_rows == 0
    assert stored(db.conn)[("2024-01-20", channel)][0] == 1
    # The marks are taken with the refresh: the next new date is computed from its new rows.
    db.execute("INSERT INTO session_sources VALUES ('n2', 'u9', '2024-01-21', '10:00:00', 'A', 0, 0, 0)")
    assert refreshed(db).from_new_rows == 1


def test_a_new_session_of_a_new_date_is_read_alone(db):
    refreshed(db)
    db.execute(_NEW_ROW)
    db.execute("INSERT INTO session_costs VALUES ('n1', 4.5)")
    result = refreshed(db)
    assert (result.dates, result.from_new_rows) == (1, 1)
    assert stored(db.conn)[("2024-01-20", "Referral")] == (1, 1, 1, 0, 0, 4.5)


def test_an_empty_table_at_the_last_refresh_has_every_later_date_read_from_its_new_rows(tmp_path):
    path = make_db(tmp_path / "db.sqlite", [], [], [])
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        assert refreshed(db).everything
        for session in SESSIONS[:4]:
            db.execute("INSERT INTO session_sources VALUES (?, ?, ?, ?, ?, 0, 0, 0)", session)
        db.execute("INSERT INTO session_costs VALUES ('s2', 1.25)")
        result = refreshed(db)
        assert (result.dates, result.from_new_rows) == (3, 3)
    finally:
        db.close()


def test_a_session_table_without_rowids_is_kept_in_step_from_the_whole_table(tmp_path):
    ddl = re.sub(r"(CREATE TABLE IF NOT EXISTS session_sources \([^;]*\))", r"\1 WITHOUT ROWID", source_ddl())
    assert "WITHOUT ROWID" in ddl
    path = make_db(tmp_path / "db.sqlite", SESSIONS, [], COSTS, ddl=ddl)
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        assert refreshed(db).everything
        assert not any(name.endswith("insert_below") for name in session_totals._existing_triggers(db))
        db.execute(_NEW_ROW)
        db.execute("UPDATE session_sources SET channel_name = 'B' WHERE session_id = 's1'")
        result = refreshed(db)
        assert (result.everything, result.dates, result.from_new_rows) == (False, 2, 0)
    finally:
        db.close()
