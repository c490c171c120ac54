"""How long a loader of the source tables waits while the pipeline runs: ``python scripts/lock_probe.py``.

Runs the DAG's stages as ``make bench`` does (its cached database, the local IHC server, a fresh
copy) while a loader in another process commits rows into ``session_sources``, ``session_costs``
and ``conversions`` every 50 ms with a 5 s busy timeout (SQLite ``timeout=5``; PostgreSQL
``lock_timeout`` and ``statement_timeout`` of 5 s). Two runs: the first over the whole range, then
the range again with ``refresh_spend`` and ``reattribute_drift`` (every spend date read again).
Prints, per stage, the loader's transactions and the longest of them (its wait, the inserts take
about a millisecond); exits 1 if one of them failed. See docs/operations.md.

    python scripts/lock_probe.py                     # SQLite, 2.47M sessions
    python scripts/lock_probe.py --postgres          # PostgreSQL at 127.0.0.1:5432
"""

from __future__ import annotations

import collections
import datetime as dt
import multiprocessing
import sqlite3
import sys
import time

import bench  # scripts/ is on sys.path when this file runs

LOADER_TIMEOUT_S = 5
PAUSE_S = 0.05
ROWS_PER_COMMIT = 20
RUNS = (("first run over the range", {}), ("again, refresh_spend and reattribute_drift",
                                        {"refresh_spend": True, "reattribute_drift": True}))


def _connect(sqlite_path: str | None, pg_dbname: str | None):
    if sqlite_path:  # sqlite3 opens a deferred transaction before the first INSERT, as BEGIN does
        return sqlite3.connect(sqlite_path, timeout=LOADER_TIMEOUT_S)
    import psycopg2

    conn = psycopg2.connect(dbname=pg_dbname, **bench.PG)
    with conn.cursor() as cur:
        cur.execute(f"SET lock_timeout = '{LOADER_TIMEOUT_S}s'")
        cur.execute(f"SET statement_timeout = '{LOADER_TIMEOUT_S}s'")
    conn.commit()
    return conn


def _commit_rows(conn, n: int, day: dt.date, after: dt.date) -> None:
    """One loader transaction: a batch of sessions of a new user with their costs, and a later conversion."""
    cur, p = conn.cursor(), "?" if isinstance(conn, sqlite3.Connection) else "%s"
    ids = [f"probe-{n}-{k}" for k in range(ROWS_PER_COMMIT)]
    cur.executemany(f"INSERT INTO session_sources VALUES ({', '.join([p] * 8)})",
                    [(i, f"probe-u{n}", str(day), "12:00:00", "Probe", 1, 1, 0) for i in ids])
    cur.executemany(f"INSERT INTO session_costs VALUES ({p}, {p})", [(i, 0.25) for i in ids])
    cur.execute(f"INSERT INTO conversions VALUES ({p}, {p}, {p}, {p}, {p})",
                (f"probe-c{n}", f"probe-u{n}", str(after), "12:00:00", 9.5))
    conn.commit()


def loader(sqlite_path: str | None, pg_dbname: str | None, days: list[dt.date], stage, stop, results) -> None:
    """Commit rows until ``stop``; put per stage index (transactions, longest seconds) and the failures."""
    conn = _connect(sqlite_path, pg_dbname)
    counts: collections.Counter = collections.Counter()
    longest: collections.defaultdict = collections.defaultdict(float)
    failures: list[str] = []
    n = 0
    while not stop.is_set():
        at_start, started = stage.value, time.perf_counter()
        try:
            _commit_rows(conn, n, days[n % len(days)], days[-1] + dt.timedelta(days=1))
        except Exception as exc:  # a busy or lock timeout: what must never happen
            failures.append(f"stage {at_start}: {type(exc).__name__}: {exc}")
            conn.rollback()
        seconds = time.perf_counter() - started
        for index in {at_start, stage.value}:
            counts[index] += 1
            longest[index] = max(longest[index], seconds)
        n += 1
        time.sleep(PAUSE_S)
    conn.close()
    results.put((dict(counts), dict(longest), failures))


def run_with_loader(args, target: bench.Target) -> tuple[list[str], dict, dict, list[str]]:
    """Both runs, the loader committing throughout; the stage labels and what the loader saw."""
    from ihc_attribution import tasks

    ctx = multiprocessing.get_context("spawn")
    stage, stop, results = ctx.Value("i", -1), ctx.Event(), ctx.Queue()
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    sqlite_path = str(target.sqlite_path) if target.sqlite_path else None
    proc = ctx.Process(target=loader, args=(sqlite_path, target.pg_dbname, days, stage, stop, results))
    proc.start()
    labels = []
    try:
        time.sleep(1.0)  # the loader is committing before the first stage starts
        for name, params in RUNS:
            context = {"run_id": f"probe-{len(labels)}",
                       "params": {"start_date": str(days[0]), "end_date": str(days[-1]), **params}}
            for stage_name in bench.STAGES:
                labels.append(f"{name}: {stage_name}")
                stage.value = len(labels) - 1
                started = time.perf_counter()
                getattr(tasks, stage_name)(context)
                print(f"  {labels[-1]}: {time.perf_counter() - started:.2f} s", flush=True)
        stage.value = -1
        time.sleep(0.5)
    finally:
        stop.set()
        counts, longest, failures = results.get(timeout=60)
        proc.join(timeout=30)
    return labels, counts, longest, failures


def main(argv: list[str] | None = None) -> int:
    args = bench.parse_args(sys.argv[1:] if argv is None else argv)
    source, setup = bench.cached_database(args), bench.Setup(args.postgres, indexes=False)
    with bench.local_server(args, args.work_dir) as server, \
            bench.scenario_database(setup, source, args.work_dir, None) as (target, _):
        bench.configure(args, target, *server, args.work_dir)
        labels, counts, longest, failures = run_with_loader(args, target)
    print(f"\n### {setup}: a loader with a {LOADER_TIMEOUT_S} s timeout committing every {PAUSE_S * 1000:.0f} ms\n")
    print("| stage | loader transactions | longest (s) |\n|---|---|---|")
    for index, label in enumerate(labels):
        print(f"| {label} | {counts.get(index, 0)} | {longest.get(index, 0.0):.3f} |")
    print(f"\nfailed loader transactions: {len(failures)}")
    for failure in failures[:10]:
        print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
