"""Copy the source tables of a SQLite database (e.g. the demo database) into a PostgreSQL database.

A development tool for trying the pipeline on PostgreSQL: ``make up WAREHOUSE=postgres`` and
the tests use it. The database is created when missing; the source tables are created with the
challenge's ``DATE``/``TIME`` columns, or with ``TEXT`` ones (``--text-columns``, as a database
loaded from CSV has them), and filled only when they are empty. The pipeline's own tables are
left to its ``setup_tables`` task.

    python -m ihc_attribution_dev.pg_load --from data/demo.db --dbname attribution_local [--text-columns]
"""

from __future__ import annotations

import argparse
import csv
import io
import sqlite3
import sys
from pathlib import Path

TEXT_DDL = """
CREATE TABLE IF NOT EXISTS session_sources (session_id TEXT PRIMARY KEY, user_id TEXT, event_date TEXT,
    event_time TEXT, channel_name TEXT, holder_engagement INT, closer_engagement INT, impression_interaction INT);
CREATE TABLE IF NOT EXISTS conversions (conv_id TEXT PRIMARY KEY, user_id TEXT, conv_date TEXT, conv_time TEXT,
    revenue FLOAT);
CREATE TABLE IF NOT EXISTS session_costs (session_id TEXT PRIMARY KEY, cost FLOAT);
"""
SOURCES = ("session_sources", "conversions", "session_costs")
# Rows a DATE/TIME column refuses (the demo's malformed session): kept only with TEXT columns.
_VALID_SESSION = "date(event_date, '+0 days') IS event_date AND time(event_time) IS event_time"


def ensure_database(dbname: str, *, host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> bool:
    """Create the PostgreSQL database ``dbname`` if it does not exist; return whether it was created."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is not None:
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return True
    finally:
        conn.close()


def load(sqlite_path: str | Path, dbname: str, *, text_columns: bool = False, host: str = "127.0.0.1",
         port: int = 5432, user: str = "postgres") -> dict[str, int]:
    """Copy the source tables of ``sqlite_path`` into ``dbname``; return the rows copied per table.

    Tables that already hold rows are left as they are (0 copied).
    """
    import psycopg2

    from ihc_attribution.schema import challenge_ddl

    ensure_database(dbname, host=host, port=port, user=user)
    src = sqlite3.connect(sqlite_path)
    conn = psycopg2.connect(host=host, port=port, user=user, dbname=dbname, connect_timeout=5)
    copied: dict[str, int] = {}
    try:
        with conn, conn.cursor() as cur:
            cur.execute(TEXT_DDL if text_columns else challenge_ddl())
            for table in SOURCES:
                cur.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
                if cur.fetchone()[0]:
                    copied[table] = 0
                    continue
                where = f" WHERE {_VALID_SESSION}" if table == "session_sources" and not text_columns else ""
                # COPY in batches: millions of rows load in seconds, memory stays bounded.
                rows = src.execute(f"SELECT * FROM {table}{where}")
                copied[table] = 0
                while batch := rows.fetchmany(200_000):
                    buffer = io.StringIO()
                    csv.writer(buffer, lineterminator="\n").writerows(
                        ["\\N" if v is None else v for v in row] for row in batch
                    )
                    buffer.seek(0)
                    cur.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)
                    copied[table] += len(batch)
    finally:
        conn.close()
        src.close()
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="the SQLite database to copy")
    parser.add_argument("--dbname", required=True, help="the PostgreSQL database (created when missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--text-columns", action="store_true", help="store dates and times as TEXT")
    args = parser.parse_args(argv)
    copied = load(args.source, args.dbname, text_columns=args.text_columns, host=args.host, port=args.port,
                  user=args.user)
    print(", ".join(f"{table}: {n} rows copied" for table, n in copied.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
