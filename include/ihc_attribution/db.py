"""A small DB-API wrapper: one place for transactions, placeholders and dialect quirks.

The pipeline writes its SQL once, with ``?`` placeholders, and runs it on SQLite (the default)
or PostgreSQL. :class:`Database` converts placeholders for drivers that use ``%s`` and makes
every write stage a single explicit transaction, so a crash leaves either the old or the new
state and never half of it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

SQLITE_BUSY_TIMEOUT_MS = 120_000


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def is_valid_text(value: str) -> bool:
    """Whether ``value`` came from valid UTF-8 (see :func:`_decode_text`)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(value: str) -> str:
    """``value`` with bytes that were not valid UTF-8 written as ``\\xNN`` escapes, so it can be stored."""
    return value if is_valid_text(value) else value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Database:
    """A DB-API connection with explicit transactions and portable placeholders.

    :param conn: an open DB-API 2 connection (``sqlite3`` or ``psycopg2``).
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.is_sqlite = isinstance(conn, sqlite3.Connection)
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"
        if self.is_sqlite:
            # Autocommit mode: transactions are opened explicitly by :meth:`transaction`.
            conn.isolation_level = None
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL lets readers (the UI plugin, a second run) work while a stage writes.
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "memory":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # A TEXT value that is not valid UTF-8 is read as a str holding its bytes as
            # surrogates instead of failing the whole query: validation quarantines the row, and
            # the CSV writes the bytes back unchanged.
            conn.text_factory = _decode_text
        self._in_transaction = False

    @classmethod
    def connect_sqlite(cls, path: str) -> Database:
        """Open a SQLite database file (used by tools and tests outside Airflow)."""
        return cls(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000))

    def _sql(self, sql: str) -> str:
        return sql if self.is_sqlite else sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed (-1 if unknown)."""
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            return cur.rowcount
        finally:
            cur.close()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows."""
        cur = self.conn.cursor()
        try:
            cur.executemany(self._sql(sql), rows)
        finally:
            cur.close()

    def executescript(self, script: str) -> None:
        """Run a script of ``;``-separated statements without parameters."""
        for statement in split_statements(script):
            self.execute(statement)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a query and return all rows."""
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            return cur.fetchall()
        finally:
            cur.close()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a query and return the first column of the first row (None if no row)."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def iter_query(self, sql: str, params: Sequence[Any] = (), batch_size: int = 10_000) -> Iterator[list[tuple]]:
        """Run a query and yield its rows in batches, so memory stays bounded."""
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            while True:
                batch = cur.fetchmany(batch_size)
                if not batch:
                    return
                yield batch
        finally:
            cur.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """Run the block in one transaction: all of it is committed, or none of it.

        On SQLite the transaction takes the write lock at once (``BEGIN IMMEDIATE``), so two
        runs writing the same tables queue behind each other instead of failing half-way.
        """
        if self._in_transaction:
            yield self
            return
        self._in_transaction = True
        try:
            if self.is_sqlite:
                self.conn.execute("BEGIN IMMEDIATE")
            else:
                # One writer at a time on the pipeline's shared tables, as on SQLite.
                self.execute("SELECT pg_advisory_xact_lock(?)", (PG_WRITE_LOCK_KEY,))
            yield self
        except BaseException:
            self.conn.rollback()
            raise
        else:
            self.conn.commit()
        finally:
            self._in_transaction = False

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


# Arbitrary constant identifying the pipeline's advisory lock on PostgreSQL.
PG_WRITE_LOCK_KEY = 7_245_301


def split_statements(script: str) -> list[str]:
    """Split a SQL script on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
