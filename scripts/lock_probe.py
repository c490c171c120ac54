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

import datetime as dt
import multiprocessing
import os
import sqlite3
import sys
import time

import bench  # scripts/ is on sys.path when this file runs
from local_run import ihc_server_process

LOADER_TIMEOUT_S = 5
PAUSE_S = 0.05
ROWS_PER_COMMIT = 20
RUNS = (("first run over the range", {}), ("again, refresh_spend and reattribute_drift",
                                        {"refresh_spend": True, "reattribute_drift": True}))


def _connect(target: dict):
    if target["sqlite_path"]:
        return sqlite3.connect(target["sqlite_path"], timeout=LOADER_TIMEOUT_S, isolation_level=None)
    import psycopg2

    conn = psycopg2.connect(dbname=target["pg_dbname"], **bench.PG)
    with conn.cursor() as cur:
        cur.execute(f"SET lock_timeout = '{LOADER_TIMEOUT_S}s'")
        cur.execute(f"SET statement_timeout = '{LOADER_TIMEOUT_S}s'")
    conn.commit()
    return conn


def _commit_rows(conn, n: int, day: dt.date, after: dt.date) -> None:
    """One loader transaction: a batch of sessions of a new user with their costs, and a later conversion."""
    cur = conn.cursor()
    is_sqlite = isinstance(conn, sqlite3.Connection)
    if is_sqlite:
        cur.execute("BEGIN")
    p = "?" if is_sqlite else "%s"
    ids = [f"probe-{n}-{k}" for k in range(ROWS_PER_COMMIT)]
    cur.executemany(f"INSERT INTO session_sources VALUES ({', '.join([p] * 8)})",
                    [(i, f"probe-u{n}", str(day), "12:00:00", "Probe", 1, 1, 0) for i in ids])
    cur.executemany(f"INSERT INTO session_costs VALUES ({p}, {p})", [(i, 0.25) for i in ids])
    cur.execute(f"INSERT INTO conversions VALUES ({p}, {p}, {p}, {p}, {p})",
                (f"probe-c{n}", f"probe-u{n}", str(after), "12:00:00", 9.5))
    if is_sqlite:
        cur.execute("COMMIT")
    else:
        conn.commit()


def loader(target: dict, days: list[dt.date], stage, stop, results) -> None:
    """Commit rows until ``stop``; put per stage index (transactions, longest seconds) and the failures."""
    conn = _connect(target)
    counts: dict[int, int] = {}
    longest: dict[int, float] = {}
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
            counts[index] = counts.get(index, 0) + 1
            longest[index] = max(longest.get(index, 0.0), seconds)
        n += 1
        time.sleep(PAUSE_S)
    conn.close()
    results.put((counts, longest, failures))


def run_with_loader(args, target: bench.Target, url: str) -> tuple[list[str], dict, dict, list[str]]:
    """Both runs, the loader committing throughout; the stage labels and what the loader saw."""
    from ihc_attribution import tasks

    ctx = multiprocessing.get_context("spawn")
    stage, stop, results = ctx.Value("i", -1), ctx.Event(), ctx.Queue()
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    spec = {"sqlite_path": str(target.sqlite_path) if target.sqlite_path else None, "pg_dbname": target.pg_dbname}
    proc = ctx.Process(target=loader, args=(spec, days, stage, stop, results))
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
    work_dir = args.db_dir / "run"
    work_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(args.db_dir / "airflow-home"))
    source = bench.cached_database(args)
    setup = bench.Setup(args.postgres, indexes=False)
    options = ("--latency-ms", str(args.latency_ms), "--max-journeys", str(args.max_journeys),
               "--max-sessions", str(args.max_sessions), "--log-level", "warning")
    with ihc_server_process(dict(os.environ), work_dir / "ihc-server.log", *options) as (url, key, _):
        with bench.scenario_database(setup, source, work_dir, None) as (target, _):
            bench.configure(args, target, url, key, work_dir)
            labels, counts, longest, failures = run_with_loader(args, target, url)
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
