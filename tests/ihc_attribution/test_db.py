"""The DB-API wrapper: one transaction per stage, portable placeholders, text that is not UTF-8."""

from __future__ import annotations

import sqlite3

import pytest

from ihc_attribution.db import Database, is_valid_text, split_statements, storable


@pytest.fixture
def db(tmp_path):
    database = Database.connect_sqlite(str(tmp_path / "db.sqlite"))
    database.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    yield database
    database.close()


def test_a_failed_transaction_leaves_nothing(db):
    with pytest.raises(sqlite3.IntegrityError), db.transaction():
        db.execute("INSERT INTO t VALUES ('a', '1')")
        db.execute("INSERT INTO t VALUES ('a', '2')")
    assert db.query("SELECT * FROM t") == []
    with db.transaction():
        db.executemany("INSERT INTO t VALUES (?, ?)", [("a", "1"), ("b", "2")])
    assert db.query("SELECT * FROM t ORDER BY k") == [("a", "1"), ("b", "2")]


def test_text_that_is_not_utf8_is_read_not_refused_and_can_be_stored_escaped(db):
    db.execute("INSERT INTO t VALUES ('a', CAST(? AS TEXT))", (b"Caf\xe9",))
    (value,) = db.query("SELECT v FROM t")[0]
    assert not is_valid_text(value) and value.encode("utf-8", "surrogateescape") == b"Caf\xe9"
    assert storable(value) == "Caf\\xe9" and storable("Café") == "Café"
    db.execute("INSERT INTO t VALUES ('b', ?)", (storable(value),))


def test_statements_are_split_outside_strings_and_comments():
    script = "CREATE TABLE a (x TEXT DEFAULT ';'); -- a comment; still a comment\nCREATE TABLE b (y INT);"
    assert [s.split("(")[0].strip() for s in split_statements(script)] == ["CREATE TABLE a", "CREATE TABLE b"]



def test_sqlite_sorts_with_helper_threads_and_leaves_the_file_as_it_was(tmp_path):
    """Sums are of integers, so a sort on several threads cannot change a digit; the journal mode
    of the user's file is not touched."""
    from ihc_attribution.db import sorter_threads

    path = tmp_path / "t.db"
    sqlite3.connect(path).close()
    db = Database.connect_sqlite(str(path))
    try:
        assert db.scalar("PRAGMA threads") == sorter_threads() >= 1
        assert db.scalar("PRAGMA journal_mode") == "delete"
    finally:
        db.close()
