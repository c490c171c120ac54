"""How long a loader of the source tables waits while the pipeline runs (docs/operations.md).

Runs the DAG's stages as ``make bench`` does, twice (then with ``refresh_spend`` and
``reattribute_drift``), while a loader in another process commits rows into the sources every 50 ms
with a 5 s busy timeout; prints, per stage, the loader's transactions and the longest of them (its
wait: the inserts take about a millisecond); exits 1 if one of them failed.

    python scripts/lock_probe.py                     # SQLite, 2.47M sessions
    python scripts/lock_probe.py --postgres          # PostgreSQL at 127.0.0.1:5432
"""

from __future__ import annotations

import collections
import datetime as dt
import json
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


def _connect(conn_json: str):
    """The loader's connection to the database of the tasks' connection ``conn_json``."""
    conn = json.loads(conn_json)
    if conn["conn_type"] == "sqlite":  # sqlite3 opens a deferred transaction before the first INSERT, as BEGIN does
        return sqlite3.connect(conn["host"], timeout=LOADER_TIMEOUT_S)
    import psycopg2

    pg = psycopg2.connect(dbname=conn["schema"], **bench.PG)
    with pg.cursor() as cur:
        cur.execute(f"SET lock_timeout = '{LOADER_TIMEOUT_S}s'")
        cur.execute(f"SET statement_timeout = '{LOADER_TIMEOUT_S}s'")
    pg.commit()
    return pg


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


def loader(conn_json: str, days: list[dt.date], stage, stop, results) -> None:
    """Commit rows until ``stop``; put per stage index (transactions, longest seconds) and the failures."""
    conn = _connect(conn_json)
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


def run_with_loader(args, conn_json: str) -> tuple[list[str], dict, dict, list[str]]:
    """Both runs, the loader committing throughout; the stage labels and what the loader saw."""
    from ihc_attribution import tasks

    ctx = multiprocessing.get_context("spawn")
    stage, stop, results = ctx.Value("i", -1), ctx.Event(), ctx.Queue()
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    proc = ctx.Process(target=loader, args=(conn_json, days, stage, stop, results))
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
    source = bench.cached_database(args)
    with bench.local_server(args), \
            bench.scenario_database(args.postgres, False, source, args.work_dir, None) as (conn_json, _):
        labels, counts, longest, failures = run_with_loader(args, conn_json)
    print(f"\n### {bench.setup_name(args.postgres, False)}: a loader with a {LOADER_TIMEOUT_S} s timeout "
          f"committing every {PAUSE_S * 1000:.0f} ms\n")
    print("| stage | loader transactions | longest (s) |\n|---|---|---|")
    for index, label in enumerate(labels):
        print(f"| {label} | {counts.get(index, 0)} | {longest.get(index, 0.0):.3f} |")
    print(f"\nfailed loader transactions: {len(failures)}")
    for failure in failures[:10]:
        print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
