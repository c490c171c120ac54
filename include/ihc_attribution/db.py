"""A small DB-API wrapper: one place for transactions, placeholders and dialect quirks.

The pipeline writes its SQL once, with ``?`` placeholders, and runs it on SQLite or PostgreSQL
through the connection of the provider's ``DbApiHook`` (:meth:`Database.from_hook`). Every write
stage is a single explicit transaction, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

SQLITE_BUSY_TIMEOUT_MS = 120_000
# Arbitrary constant identifying the pipeline's advisory lock on PostgreSQL.
PG_WRITE_LOCK_KEY = 7_245_301


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


# Connection types the pipeline runs on, with the provider that supplies each one's hook.
SUPPORTED_CONN_TYPES = {
    "sqlite": "apache-airflow-providers-sqlite",
    "postgres": "apache-airflow-providers-postgres",
}
# What follows a text in ORDER BY so that it sorts in byte order (code point order), whatever the
# database's collation: ties of equal timestamps are broken the same way on every engine. SQLite's
# default (BINARY) is byte order already.
BYTE_ORDER = {"sqlite": "", "postgresql": ' COLLATE "C"'}
# Column types a cast may name (they come from the database's catalog, never from input).
_CASTABLE_TYPE = re.compile(r"^(date|text|time without time zone|timestamp without time zone|character varying(\(\d+\))?)$")


class Database:
    """An open DB-API 2 connection (``sqlite3``, ``psycopg``) with explicit transactions and ``?`` placeholders
    (psycopg's ``%s`` on PostgreSQL)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.is_sqlite = isinstance(conn, sqlite3.Connection)
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"
        self.hook: Any = None  # the provider's hook the connection came from (see :meth:`from_hook`)
        if self.is_sqlite:
            # Autocommit mode: transactions are opened explicitly by :meth:`transaction`.
            conn.isolation_level = None
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # Large sorts (the spend's GROUP BY, the journeys' copy's index) use helper threads of
            # this process, one per CPU it may use: 3.7 s down to 2.6 s at 2.47M sessions on 2 CPUs.
            # Sums are of integers, so their order does not change a digit. A setting of this
            # connection only, like busy_timeout: nothing of the user's file changes.
            conn.execute(f"PRAGMA threads = {sorter_threads()}")
            # A TEXT value that is not valid UTF-8 is read as a str holding its bytes as
            # surrogates instead of failing the whole query: validation quarantines the row, and
            # the CSV writes the bytes back unchanged.
            conn.text_factory = _decode_text
            attach_source_files(conn)
        else:
            # For this session only: dates cast to text read YYYY-MM-DD whatever the database's
            # DateStyle (a setting of the user's, which the package never changes).
            self.execute("SET DateStyle TO ISO, YMD")
            conn.commit()
        self._in_transaction = False

    @classmethod
    def connect_sqlite(cls, path: str) -> Database:
        """Open a SQLite database file (for tools and tests outside Airflow)."""
        return cls(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000))

    @classmethod
    def from_hook(cls, hook: Any) -> Database:
        """Open the database of a provider's ``DbApiHook``."""
        db = cls(hook.get_conn())
        db.hook = hook
        return db

    def _sql(self, sql: str) -> str:
        return sql if self.is_sqlite else sql.replace("?", "%s")

    def as_type_of(self, expr: str, table: str, column: str) -> str:
        """``expr`` cast to the declared type of ``table.column`` (found through the ``search_path``) on PostgreSQL.

        SQLite compares a ``DATE`` column with text as it is, and keeps using its indexes: ``expr`` as it is.
        """
        if self.is_sqlite:
            return expr
        declared = str(self.scalar(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(?) AND a.attname = ? AND NOT a.attisdropped",
            (table, column),
        ) or "date").lower()
        if not _CASTABLE_TYPE.match(declared):
            raise ValueError(f"{table}.{column} has type {declared!r}; dates must be DATE or text columns")
        return f"CAST({expr} AS {declared})"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.execute(self._sql(sql), tuple(params))
            return cur.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.executemany(self._sql(sql), rows)

    def executescript(self, script: str) -> None:
        for statement in split_statements(script):
            self.execute(statement)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.execute(self._sql(sql), tuple(params))
            return cur.fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def iter_query(self, sql: str, params: Sequence[Any] = (), batch_size: int = 10_000) -> Iterator[list[tuple]]:
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.execute(self._sql(sql), tuple(params))
            while batch := cur.fetchmany(batch_size):
                yield batch

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

    def abandon_reads(self) -> None:
        """End the implicit transaction of reads made outside :meth:`transaction`: after an error, or
        before slow work that needs the database no longer.

        On PostgreSQL an error aborts it (every later statement would fail, hiding the error), and
        it holds its snapshot and locks until it ends; rolling it back also drops its temporary tables.
        """
        if not self.is_sqlite and not self._in_transaction:
            self.conn.rollback()

    def units(self, expr: str, decimals: int, *, numeric: bool = False) -> str:
        """``expr`` (a number) as a whole number of ``10**-decimals``, rounded half away from zero.

        Money and credit are summed as such integers, so every order of summation gives the same
        digits. SQLite's ``ROUND(x)`` is ``trunc(|x| + 0.5)`` with the sign of ``x``, computed in
        double precision; on PostgreSQL a ``double precision`` value (``numeric`` false) is rounded
        by the same arithmetic, bit for bit (its own ``round`` takes a half to the even side), and
        a ``NUMERIC`` one (``numeric`` true) exactly. Both engines give the same integer.
        """
        scale = 10**decimals
        if self.is_sqlite:
            return f"CAST(ROUND(({expr}) * {scale}) AS INTEGER)"
        if numeric:
            return f"CAST(ROUND(({expr}) * {scale}) AS BIGINT)"
        v = f"(CAST({expr} AS DOUBLE PRECISION) * {scale})"
        return f"CAST(CASE WHEN {v} >= 0 THEN TRUNC({v} + 0.5) ELSE -TRUNC(0.5 - {v}) END AS BIGINT)"

    def round_div(self, expr: str, divisor: int) -> str:
        """The integer ``expr`` divided by ``divisor``, rounded half away from zero (see :func:`round_div_sql`)."""
        return round_div_sql(expr, divisor, sqlite=self.is_sqlite)

    def table_exists(self, table: str) -> bool:
        """Whether ``table`` (a table or view) is found (through the ``search_path`` on PostgreSQL)."""
        if self.is_sqlite:
            return bool(self.scalar("SELECT COUNT(*) FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (table,)))
        return self.scalar("SELECT to_regclass(?) IS NOT NULL", (table,)) is True

    def columns(self, table: str) -> set[str]:
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
            return {d[0] for d in cur.description}

    def describe(self) -> str:
        """Where the connection points, for error messages (no credentials)."""
        if self.is_sqlite:
            return f"SQLite file {self.sqlite_file() or ':memory:'}"
        database, path = self.query("SELECT current_database(), current_setting('search_path')")[0]
        return f"PostgreSQL database {database} (search_path {path})"

    def sqlite_file(self) -> str | None:
        """The file of the main SQLite database; None for an in-memory or temporary one."""
        file = next((r[2] for r in self.query("PRAGMA database_list") if r[1] == "main"), "")
        return file or None

    def table_uri(self, table: str) -> str:
        """A standard URI of ``table``, as Airflow assets and lineage name tables.

        PostgreSQL: ``postgres://host:port/database/schema/table`` (the schema the ``search_path``
        finds first); SQLite: ``sqlite://localhost/abs/path/file.db/main/table``.
        """
        if self.is_sqlite:
            file = self.sqlite_file() or ":memory:"
            # A host part, as Airflow normalises "sqlite:///path" to "sqlite:/path".
            return f"sqlite://localhost{file}/main/{table}"
        database, schema_name = self.query("SELECT current_database(), current_schema()")[0]
        conn = getattr(self.hook, "connection", None)
        host = getattr(conn, "host", None) or "localhost"
        port = getattr(conn, "port", None) or 5432
        return f"postgres://{host}:{port}/{database}/{schema_name}/{table}"

    def close(self) -> None:
        self.conn.close()


def pg_text_not_a_date(column: str) -> str:
    """PostgreSQL predicate: the text ``column`` is NULL or not a real ``YYYY-MM-DD`` date.

    The counterpart of SQLite's ``date(x, '+0 days') IS NOT x`` for source tables that store
    dates as text (as loaded from CSV): it catches malformed text, impossible days (2023-09-31,
    month 13, year 0000) and dates followed by a time or zone, without a cast that could fail.
    """
    c = column
    return (
        f"({c} IS NULL OR NOT CASE WHEN {c} ~ '^[0-9]{{4}}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$' "
        f"AND substr({c}, 1, 4) <> '0000' "
        f"THEN CAST(substr({c}, 9, 2) AS INT) <= EXTRACT(DAY FROM CAST(substr({c}, 1, 7) || '-01' AS DATE) "
        "+ INTERVAL '1 month' - INTERVAL '1 day') ELSE FALSE END)"
    )


def attach_source_files(conn: sqlite3.Connection) -> None:
    """Attach the SQLite files ``$ATTRIBUTION_SOURCES`` reads sources from to this connection, read-only (``mode=ro``).

    :raises PermanentError: when a file does not exist (attaching would create it) or this SQLite
        does not read URI file names (``mode=ro`` would be taken for part of the name).
    """
    from urllib.parse import quote

    from ihc_attribution import settings
    from ihc_attribution.errors import PermanentError

    try:
        files = settings.sqlite_source_files()
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    if files and ("USE_URI",) not in conn.execute("PRAGMA compile_options").fetchall():
        raise PermanentError("ATTRIBUTION_SOURCES: this SQLite library cannot attach files read-only (no URI file names)")
    for name, path in files.items():
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise PermanentError(f"ATTRIBUTION_SOURCES: the SQLite file {path} to attach as {name} does not exist")
        conn.execute(f'ATTACH DATABASE ? AS "{name.replace(chr(34), chr(34) * 2)}"', (f"file:{quote(path)}?mode=ro",))


def sorter_threads() -> int:
    """Helper threads SQLite's sorter may use: the CPUs this process may run on, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # Linux, or not
    return min(cpus, 4)


def round_div_sql(expr: str, divisor: int, *, sqlite: bool) -> str:
    """SQL: the integer ``expr`` divided by ``divisor``, rounded half away from zero, in integers."""
    half = divisor // 2
    if sqlite:
        up, down = f"(({expr}) + {half}) / {divisor}", f"({half} - ({expr})) / {divisor}"
    else:  # a SUM of integers is NUMERIC there, whose "/" keeps the fraction
        up, down = f"div(({expr}) + {half}, {divisor})", f"div({half} - ({expr}), {divisor})"
    return f"(CASE WHEN ({expr}) >= 0 THEN {up} ELSE -{down} END)"


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements (the common SQL provider's sqlparse-based splitter)."""
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    return DbApiHook.split_sql_string(script, strip_semicolon=True)
