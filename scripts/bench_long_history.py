"""Benchmark of ``extract_journeys`` for one user with a long history (docs/bench.md).

Makes a database holding one user with ``--sessions`` sessions (one every 5 minutes) and
``--conversions`` conversions (one every 4 days, at the end of that history), extracts the
journeys of all of them in one run with the limit ``--max-sessions`` per request, and prints the
time, the journey rows staged and the growth of the database.

    python scripts/bench_long_history.py                      # 100,000 sessions, 30 conversions
    python scripts/bench_long_history.py --stage-all          # every session staged
    python scripts/bench_long_history.py --postgres           # on PostgreSQL (127.0.0.1:5432, database test)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ihc_attribution import journeys, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database


def fill(db: Database, sessions: int, conversions: int) -> None:
    """One user's ``sessions`` sessions, and ``conversions`` conversions over its last months."""
    times = [dt.datetime(2023, 1, 1) + dt.timedelta(minutes=5 * i) for i in range(sessions)]
    ends = [times[-1] - dt.timedelta(hours=96 * k - 1) for k in range(conversions)]
    with db.transaction():
        db.executescript(schema.challenge_ddl())
        db.executemany("INSERT INTO session_sources VALUES (?, 'u1', ?, ?, 'Referral', 1, 1, 0)",
                       [(f"s{i:06d}", t.strftime("%Y-%m-%d"), t.strftime("%H:%M:%S")) for i, t in enumerate(times)])
        db.executemany("INSERT INTO conversions VALUES (?, 'u1', ?, ?, 10.0)",
                       [(f"c{k:03d}", t.strftime("%Y-%m-%d"), t.strftime("%H:%M:%S")) for k, t in enumerate(ends)])


@contextlib.contextmanager
def postgres_schema() -> Iterator[Database]:
    """A throw-away schema of PostgreSQL's database ``test``, dropped afterwards."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    name = f"attribution_bench_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
        cur.execute(f"SET search_path TO {name}")
    try:
        yield Database(conn)
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        conn.commit()
        conn.close()


def size_mb(db: Database, path: Path) -> float:
    """The SQLite file's size, or the size of the PostgreSQL schema's tables."""
    return (path.stat().st_size if db.is_sqlite else int(db.scalar(
        "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')"))) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=100_000, help="sessions of the user (default 100,000)")
    p.add_argument("--conversions", type=int, default=30, help="conversions of the user (default 30)")
    p.add_argument("--max-sessions", type=int, default=3000, help="max_sessions_per_request (default 3,000)")
    p.add_argument("--stage-all", action="store_true", help="stage every session of every journey")
    p.add_argument("--postgres", action="store_true", help="run on PostgreSQL at 127.0.0.1:5432, user postgres")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long_history.db"
        with postgres_schema() if args.postgres else contextlib.closing(Database.connect_sqlite(str(path))) as db:
            fill(db, args.sessions, args.conversions)
            schema.ensure_schema(db)
            size = size_mb(db, path)
            cut = {} if args.stage_all else {"max_sessions": args.max_sessions}
            started = time.perf_counter()
            summary = journeys.extract_journeys(db, "r1", range_from_params({"start_date": "2000-01-01",
                                                                             "end_date": "2099-12-31"}), **cut)
            took = time.perf_counter() - started
            staged = db.scalar("SELECT COUNT(*) FROM attribution_stg_sessions")
            print(f"extract_journeys {took:.1f} s; {summary.journeys} journeys of {summary.sessions:,} sessions "
                  f"(longest {summary.max_journey_sessions:,}); {staged:,} journey rows staged; "
                  f"database {size:.1f} MB -> {size_mb(db, path):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
