"""Passes over SQLite split over processes: the same rows as the single statement, exactly."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ihc_attribution import journeys, schema, sqlite_processes
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import make_db, source_ddl

RANGE = range_from_params({"start_date": "2024-01-08", "end_date": "2024-01-09"})
STAGING = (
    "SELECT * FROM attribution_stg_sessions ORDER BY conv_id, event_ts, session_id",
    "SELECT conv_id, user_id, conv_date, conv_time, revenue, status, n_sessions "
    "FROM attribution_stg_conversions ORDER BY conv_id",
    "SELECT conv_id, reason, detail FROM attribution_stg_issues ORDER BY conv_id, reason",
    "SELECT conv_id, journey_hash FROM attribution_stg_journey_keys ORDER BY conv_id",
)


def _odd_sources(path, *, keys: bool = True) -> Database:
    """3,000 sessions of 300 users, some with values only the database can tell apart."""
    rng = random.Random(5)
    sessions = [
        (f"s{i:05d}", f"u{rng.randrange(300)}", f"2024-01-{rng.randrange(1, 10):02d}",
         f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00", rng.choice(["Email", "SEA", "Referral"]))
        for i in range(3000)
    ]
    conversions = [(f"c{i}", f"u{i}", f"2024-01-0{8 + i % 2}", "12:00:00", 10.0 + i) for i in range(0, 300, 3)]
    make_db(path, sessions, conversions, [], ddl=None if keys else source_ddl(keys=False))
    db = Database.connect_sqlite(str(path))
    db.execute("UPDATE session_sources SET channel_name = CAST(x'ff41' AS TEXT) WHERE session_id LIKE 's001%'")
    db.execute("UPDATE session_sources SET channel_name = CAST(x'41004200' AS TEXT) WHERE session_id LIKE 's002%'")
    db.execute("UPDATE session_sources SET channel_name = x'0102' WHERE session_id LIKE 's003%'")
    db.execute("UPDATE session_sources SET event_date = NULL WHERE session_id LIKE 's0040%'")
    db.execute("UPDATE session_sources SET holder_engagement = 0.5 WHERE session_id LIKE 's0041%'")
    db.execute("UPDATE session_sources SET event_time = 93000 WHERE session_id LIKE 's0042%'")
    # Rows with rowids outside 1..MAX(rowid)'s usual range: negative, and after a gap.
    db.execute("INSERT INTO session_sources (rowid, session_id, user_id, event_date, event_time, channel_name, "
               "holder_engagement, closer_engagement, impression_interaction) "
               "VALUES (-7, 'neg', 'u3', '2024-01-02', '10:00:00', 'Email', 1, 1, 0)")
    db.execute("INSERT INTO session_sources (rowid, session_id, user_id, event_date, event_time, channel_name, "
               "holder_engagement, closer_engagement, impression_interaction) "
               "VALUES (90000, 'far', 'u6', '2024-01-03', '10:00:00', 'SEA', 0, 1, 1)")
    schema.ensure_schema(db)
    return db


def _raw_buyer_sessions(db: Database) -> list[tuple]:
    columns = (
        "session_id", "user_id", "event_date", "event_time", "channel_name",
        "holder_engagement", "closer_engagement", "impression_interaction", "clean",
    )
    exact = ", ".join(f"typeof({c}), quote({c})" for c in columns)
    return db.query(f"SELECT rowid, {exact} FROM {journeys.BUYER_SESSIONS} ORDER BY rowid")


def _buyer_sessions(db: Database, processes: int) -> tuple[int, list[tuple], list[tuple]]:
    with db.transaction():
        journeys.clear_run_staging(db, "r1")
        journeys._stage_conversions(db, "r1", RANGE, journeys.ExtractSummary())
        used = journeys.stage_buyer_sessions(db, "r1", processes=processes)
        rows = _raw_buyer_sessions(db)
        declared = db.query(f"SELECT name, type FROM pragma_table_info('{journeys.BUYER_SESSIONS}')")
        journeys.drop_buyer_sessions(db)
    return used, rows, declared


@pytest.mark.parametrize("processes", [2, 3])
def test_the_buyers_sessions_found_in_processes_are_the_single_statement_s_rows_in_order(tmp_path, monkeypatch, processes):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    db = _odd_sources(tmp_path / "db.sqlite")
    try:
        used_single, single, declared_single = _buyer_sessions(db, 1)
        used_split, split, declared_split = _buyer_sessions(db, processes)
        assert (used_single, used_split) == (1, processes)
        assert split == single
        assert declared_split == declared_single
        kinds = {row[2 * i + 1] for row in single for i in range(9)}
        assert {"text", "blob", "null", "real", "integer"} <= kinds, "the odd values are among the buyers' sessions"
        assert any(row[2] == "'neg'" for row in single) and any(row[2] == "'far'" for row in single)
    finally:
        db.close()


@pytest.mark.parametrize("keys", [True, False])
def test_a_run_staged_with_processes_is_staged_as_with_one(tmp_path, monkeypatch, keys):
    # The journeys, their flags and fingerprints, the quarantine and its details.
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    staged = {}
    for processes in ("1", "2"):
        monkeypatch.setenv(sqlite_processes.PROCESSES_VARIABLE, processes)
        db = _odd_sources(tmp_path / f"db{processes}.sqlite", keys=keys)
        try:
            summary = journeys.extract_journeys(db, "r1", RANGE)
            staged[processes] = (summary, [db.query(sql) for sql in STAGING])
        finally:
            db.close()
    assert staged["2"] == staged["1"]
    summary, (sessions, _, issues, _) = staged["1"]
    assert summary.journeys > 20 and sessions, "journeys were staged"
    assert summary.invalid_input > 0 and issues, "the odd values quarantined conversions"


@pytest.fixture(autouse=True)
def _own_temporary_directory(tmp_path, monkeypatch):
    # A pass removes the abandoned directories of others: only this test's are looked at.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def _part_files() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "attribution-parts-*")))


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_the_parts_are_detached_and_removed_when_the_transaction_ends(tmp_path, monkeypatch, outcome):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    db = _odd_sources(tmp_path / "db.sqlite")
    before = _part_files()
    try:
        with pytest.raises(RuntimeError) if outcome == "rollback" else contextlib.nullcontext():
            with db.transaction():
                journeys._stage_conversions(db, "r1", RANGE, journeys.ExtractSummary())
                assert journeys.stage_buyer_sessions(db, "r1", processes=2) == 2
                attached = {row[1] for row in db.query("PRAGMA database_list")}
                assert attached == {"main", "temp", "attribution_part0", "attribution_part1"}
                assert len(_part_files() - before) == 1
                if outcome == "rollback":
                    raise RuntimeError("a crash in the stage")
        assert {row[1] for row in db.query("PRAGMA database_list")} == {"main", "temp"}
        assert _part_files() == before
    finally:
        db.close()


def test_a_failing_process_leaves_the_pass_to_the_single_statement(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    db = _odd_sources(tmp_path / "db.sqlite")
    try:
        _, single, _ = _buyer_sessions(db, 1)
        monkeypatch.setattr(sqlite_processes, "WORKER", "import sys; sys.exit('cannot read the database')")
        before = _part_files()
        used, rows, _ = _buyer_sessions(db, 2)
        assert used == 1 and rows == single
        assert "cannot read the database" in caplog.text
        assert _part_files() == before
    finally:
        db.close()


def test_small_tables_memory_and_rollback_journals_are_passed_over_in_one_process(tmp_path, monkeypatch):
    db = _odd_sources(tmp_path / "db.sqlite")
    try:
        assert _buyer_sessions(db, 2)[0] == 1, "below sqlite_processes.MIN_ROWS"
        monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
        db.execute("PRAGMA journal_mode = DELETE")
        assert _buyer_sessions(db, 2)[0] == 1, "readers would wait for the writer"
    finally:
        db.close()
    memory = Database(sqlite3.connect(":memory:"))
    memory.executescript(source_ddl())
    schema.ensure_schema(memory)
    assert sqlite_processes.shared_file(memory, "session_sources") is None


@given(size=st.integers(min_value=1, max_value=10**12), parts=st.integers(min_value=1, max_value=8))
def test_rowid_ranges_cover_every_rowid_once_in_order(size, parts):
    ranges = sqlite_processes.rowid_ranges(size, parts)
    assert len(ranges) == parts
    assert ranges[0][0] == -(2**63) and ranges[-1][1] == 2**63 - 1
    for (_, high), (low, _) in zip(ranges, ranges[1:]):
        assert low == high + 1
    assert all(low <= high for low, high in ranges)


def test_after_transaction_runs_when_it_ends_and_needs_one(tmp_path):
    db = Database.connect_sqlite(str(tmp_path / "db.sqlite"))
    calls = []
    try:
        with pytest.raises(RuntimeError, match="open transaction"):
            db.after_transaction(lambda: calls.append("outside"))
        with db.transaction():
            db.after_transaction(lambda: calls.append("committed"))
            assert calls == []
        with pytest.raises(ZeroDivisionError), db.transaction():
            db.after_transaction(lambda: calls.append("rolled back"))
            raise ZeroDivisionError("a failing stage")
        assert calls == ["committed", "rolled back"]
    finally:
        db.close()


_ODD_VALUES = (
    "CAST(x'ff41' AS TEXT)", "CAST(x'41004200' AS TEXT)", "x'0102'", "NULL", "7", "0.5", "'plain'", "''",
)


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16le"])
def test_inputs_reach_the_parts_value_for_value(tmp_path, encoding):
    path = tmp_path / "db.sqlite"
    setup = sqlite3.connect(path)
    setup.execute(f"PRAGMA encoding = '{encoding}'")
    setup.execute("CREATE TABLE t (x)")
    setup.execute("PRAGMA journal_mode = WAL")
    setup.commit()
    setup.close()
    db = Database.connect_sqlite(str(path))
    exact = "SELECT typeof(v), hex(v) FROM {table} ORDER BY rowid"
    try:
        with db.transaction():
            db.execute("INSERT INTO t VALUES (1)")  # the image is taken within a transaction that wrote
            db.execute("CREATE TEMP TABLE odd (v)")
            for value in _ODD_VALUES:
                db.execute(f"INSERT INTO odd VALUES ({value})")
            expected = db.query(exact.format(table="odd"))
            assert {row[0] for row in expected} == {"text", "blob", "null", "integer", "real"}
            file = sqlite_processes._write_inputs(db, tmp_path / "inputs.sqlite")
            reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                reader.execute("ATTACH DATABASE ? AS inputs", (f"file:{file}?mode=ro",))
                reader.execute("CREATE TEMP TABLE copied (v)")
                reader.execute("INSERT INTO copied SELECT v FROM inputs.odd")
                assert reader.execute(exact.format(table="copied")).fetchall() == expected
                assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (0,), "it reads the committed main"
            finally:
                reader.close()
    finally:
        db.close()


def _hold_a_workdir(tmp: str, then: str) -> subprocess.Popen:
    """A process that makes a pass directory in ``tmp`` and then exits (``kill``: SIGKILL) or waits."""
    code = (
        "import os, signal, sys, tempfile, time\n"
        f"tempfile.tempdir = {tmp!r}\n"
        "from ihc_attribution import sqlite_processes\n"
        "workdir, owner = sqlite_processes._new_workdir()\n"
        "open(os.path.join(workdir, 'part0.sqlite'), 'w').write('rows')\n"
        "print(workdir, flush=True)\n"
        f"{'os.kill(os.getpid(), signal.SIGKILL)' if then == 'kill' else 'sys.stdin.read()'}\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_the_directory_of_a_killed_pass_is_removed_by_the_next_one(tmp_path):
    tmp = tempfile.gettempdir()
    alive = _hold_a_workdir(tmp, "wait")
    in_use = alive.stdout.readline().strip()
    killed = _hold_a_workdir(tmp, "kill")
    abandoned = killed.stdout.read().strip()
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and os.path.isdir(abandoned)
    being_made = tempfile.mkdtemp(prefix="attribution-parts-")  # no lock file yet
    old_unlocked = tempfile.mkdtemp(prefix="attribution-parts-")
    os.utime(old_unlocked, (time.time() - 2 * 3600,) * 2)
    try:
        removed = sqlite_processes.remove_abandoned_workdirs()
        assert sorted(removed) == sorted([abandoned, old_unlocked])
        assert not os.path.exists(abandoned) and not os.path.exists(old_unlocked)
        assert os.path.isdir(in_use) and os.path.isdir(being_made)
        workdir, owner = sqlite_processes._new_workdir()
        owner.close()
        assert os.path.isdir(in_use), "a pass leaves the directories in use alone"
    finally:
        alive.communicate("")
    assert sqlite_processes.remove_abandoned_workdirs() == sorted([in_use, workdir])


def test_a_temporary_directory_without_locks_leaves_the_pass_to_the_single_statement(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_processes, "MIN_ROWS", 0)
    db = _odd_sources(tmp_path / "db.sqlite")
    try:
        _, single, _ = _buyer_sessions(db, 1)
        asked = []

        def no_locks(handle, operation):
            asked.append(operation)
            raise OSError(37, "No locks available")
        monkeypatch.setattr(sqlite_processes.fcntl, "flock", no_locks)
        used, rows, _ = _buyer_sessions(db, 2)
        assert sqlite_processes.fcntl.LOCK_EX in asked, "the pass asked for its directory's lock"
        assert used == 1 and rows == single
        assert _part_files() == set(), "the directory made for the pass is gone"
    finally:
        db.close()
