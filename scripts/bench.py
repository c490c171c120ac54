"""Benchmark of the attribution pipeline: ``make bench`` (options: ``make bench ARGS="..."``).

Generates a demo database (cached in ``--db-dir`` by its parameters), starts the local IHC server
in its own process and runs the DAG's stages as its tasks do (``ihc_attribution.tasks.<stage>``,
connections from ``AIRFLOW_CONN_*`` JSON variables), each scenario on a fresh copy. Prints one
markdown table per configuration (SQLite or PostgreSQL, with or without indexes on the sources):
a first run over the whole range; then, on another copy holding back the range's last day, a run
without that day, and that day's run once its rows are inserted. See docs/bench.md.

    python scripts/bench.py                          # 2.47M sessions, 13,300 conversions, 30 days
    python scripts/bench.py --indexes both --postgres
    python scripts/bench.py --sessions 20000 --conversions 200 --days 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from local_env import ihc_conn, ihc_server_process, sqlite_conn  # scripts/ is on sys.path when this file runs

from ihc_attribution import schema

ROOT = Path(__file__).resolve().parents[1]
# The DAG's tasks, in the order it runs them.
STAGES = ("setup_tables", "extract_journeys", "pack_requests", "call_ihc_api",
          "load_attribution", "build_report", "export_csv", "check_run")
# The indexes setup_tables advises on the sources; the package never creates them.
SOURCE_INDEXES = tuple(f"CREATE INDEX ix_{t}_{c} ON {t} ({c})" for t, c, _ in schema.SOURCE_INDEXES)
# A day's rows as a loader appends them: its sessions, their costs, its conversions.
DAY_ROWS = (
    ("session_costs", "session_id IN (SELECT session_id FROM session_sources WHERE event_date = ?)"),
    ("session_sources", "event_date = ?"),
    ("conversions", "conv_date = ?"),
)
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
TARGET_OTHER_STAGES_S, TARGET_API_RATIO, TARGET_LAST_DAY_S = 5.0, 1.3, 2.0


def setup_name(postgres: bool, indexes: bool) -> str:
    return f"{'PostgreSQL' if postgres else 'SQLite'}, {'with' if indexes else 'without'} indexes on the sources"


@dataclass
class Run:
    """One run of every stage: wall seconds per stage, what pack_requests packed, requests the server counted."""

    seconds: dict[str, float]
    packed: dict
    requests: int
    sessions: int
    conversions: int

    def total(self, without: str = "") -> float:
        return sum(s for stage, s in self.seconds.items() if stage != without)


def cached_database(args: argparse.Namespace) -> Path:
    """The generated database for these parameters, made once with the demo generator."""
    from ihc_attribution_dev.demo_data import DemoConfig, generate

    path = args.db_dir / f"bench_{args.sessions}s_{args.conversions}c_{args.start}_{args.days}d_seed{args.seed}.db"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        started = time.perf_counter()
        generate(path, DemoConfig(start=args.start, end=args.last, conversions=args.conversions,
                                  sessions_per_conversion=args.sessions / args.conversions, seed=args.seed))
        print(f"  generated in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def drop_pg_database(dbname: str) -> None:
    import psycopg2

    with contextlib.closing(psycopg2.connect(dbname="postgres", **PG)) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@contextlib.contextmanager
def scenario_database(postgres: bool, indexes: bool, source: Path, work_dir: Path, held_day: dt.date | None):
    """A fresh copy of ``source``, on SQLite or in a throw-away PostgreSQL database, removed afterwards;
    the tasks' ``attribution_db`` meanwhile. Yields its connection (JSON) and the rows taken out of the
    copy's sources for ``held_day``, by table."""
    from ihc_attribution import tasks
    from ihc_attribution_dev import pg_load

    copy, dbname = work_dir / "work.db", f"ihc_bench_{os.getpid()}"
    shutil.copyfile(source, copy)
    try:
        held = {}
        with contextlib.closing(sqlite3.connect(copy)) as conn, conn:
            for table, where in DAY_ROWS if held_day else ():
                held[table] = conn.execute(f"SELECT * FROM {table} WHERE {where}", (str(held_day),)).fetchall()
                conn.execute(f"DELETE FROM {table} WHERE {where}", (str(held_day),))
        conn_json = sqlite_conn(copy)
        if postgres:
            drop_pg_database(dbname)
            pg_load.load(copy, dbname, **PG)
            conn_json = json.dumps({"conn_type": "postgres", "host": PG["host"], "port": PG["port"],
                                    "login": PG["user"], "schema": dbname})
        os.environ.pop("ATTRIBUTION_DB_CONN_ID", None)
        os.environ["AIRFLOW_CONN_ATTRIBUTION_DB"] = conn_json
        with tasks.open_db() as db, db.transaction():
            for statement in SOURCE_INDEXES if indexes else ():
                db.execute(statement)
            if postgres:  # freshly loaded tables have no statistics until autovacuum's next pass
                db.execute("ANALYZE session_sources, session_costs, conversions")
        yield conn_json, held
    finally:
        copy.unlink(missing_ok=True)
        if postgres:
            drop_pg_database(dbname)


def insert_held(held: dict[str, list[tuple]]) -> None:
    """Append the held-back day to the sources, as a loader would."""
    from ihc_attribution import tasks

    with tasks.open_db() as db, db.transaction():
        for table, rows in held.items():
            if rows:
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def floor_seconds() -> float:
    """Median of three scans of ``session_sources`` that read every row, after one to warm the cache."""
    from ihc_attribution import tasks

    with tasks.open_db() as db:
        sql = "SELECT COUNT(*), SUM(LENGTH(channel_name)) FROM session_sources" + (" NOT INDEXED" if db.is_sqlite else "")
        times = []
        for _ in range(4):
            started = time.perf_counter()
            db.query(sql)
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


@contextlib.contextmanager
def local_server(args: argparse.Namespace):
    """The local IHC server in its own process with the benchmark's latency and limits, as the tasks' ``ihc_api``
    and with their output in the work folder; yields its URL."""
    from ihc_attribution.ihc.hook import IhcHook

    options = ("--latency-ms", str(args.latency_ms), "--max-journeys", str(args.max_journeys),
               "--max-sessions", str(args.max_sessions), "--log-level", "warning")
    with ihc_server_process(dict(os.environ), args.work_dir / "ihc-server.log", *options) as (port, key):
        for name in ("ATTRIBUTION_IHC_CONN_ID", "ATTRIBUTION_OUTPUT_BASE_URL"):
            os.environ.pop(name, None)
        os.environ["ATTRIBUTION_OUTPUT_DIR"] = str(args.work_dir / "output")
        os.environ["AIRFLOW_CONN_IHC_API"] = ihc_conn(
            port, key, max_concurrency=args.concurrency, max_journeys_per_request=args.max_journeys,
            max_sessions_per_request=args.max_sessions)
        # Each task of a DAG run loads the providers and hooks in its own process; here that would fall on
        # whichever stage came first.
        IhcHook(ihc_conn_id="ihc_api").settings  # noqa: B018
        yield f"http://127.0.0.1:{port}"


def server_requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        return json.load(response)["requests"]


def run_stages(url: str, name: str, first: dt.date, last: dt.date) -> Run:
    """Every stage over ``[first, last]`` in this process, called as the DAG's tasks call them."""
    from ihc_attribution import tasks

    with tasks.open_db() as db:
        sizes = [db.scalar(f"SELECT COUNT(*) FROM {table}") for table in ("session_sources", "conversions")]
    context = {"run_id": f"bench-{name}", "params": {"start_date": str(first), "end_date": str(last)}}
    before, seconds, results = server_requests(url), {}, {}
    for stage in STAGES:
        started = time.perf_counter()
        results[stage] = getattr(tasks, stage)(context)
        seconds[stage] = time.perf_counter() - started
    return Run(seconds, results["pack_requests"], server_requests(url) - before, *sizes)


def measure(args, postgres: bool, indexes: bool, source: Path, url: str) -> str:
    """Both scenarios of one configuration, each on a fresh copy; the table of their figures."""
    name = setup_name(postgres, indexes)
    with scenario_database(postgres, indexes, source, args.work_dir, None):
        floor = floor_seconds()
        print(f"{name}: first run over the whole range ...", flush=True)
        runs = [("whole range, first run", run_stages(url, "range", args.start, args.last))]
    if args.days > 1:
        with scenario_database(postgres, indexes, source, args.work_dir, args.last) as (_, held):
            print(f"{name}: the range without its last day, then that day ...", flush=True)
            before = run_stages(url, "range", args.start, args.last - dt.timedelta(days=1))
            insert_held(held)
            runs += [("range without its last day", before),
                     ("last day alone", run_stages(url, "last-day", args.last, args.last))]
    return render(args, name, floor, runs)


def render(args: argparse.Namespace, name: str, floor: float, runs: list[tuple[str, Run]]) -> str:
    """One markdown table: a column per run; the sizes, a row per stage, totals, requests, bounds, targets."""
    values = [run for _, run in runs]

    def lower_bound(r: Run) -> int:
        return max(math.ceil(r.packed["journeys"] / args.max_journeys), math.ceil(r.packed["sessions"] / args.max_sessions))

    def latency_bound(r: Run) -> float:
        return r.requests * args.latency_ms / 1000 / args.concurrency

    def verdict(ok: bool, figure: str) -> str:
        return f"{'met' if ok else 'NOT met'} ({figure})"

    def row(title: str, cell) -> list[str]:
        return [title, *(cell(run) for run in values)]

    whole = values[0]
    others, api, bound = whole.total(without="call_ihc_api"), whole.seconds["call_ihc_api"], latency_bound(whole)
    rows = [row("sessions in the database", lambda r: f"{r.sessions:,}"),
            row("conversions in the database", lambda r: f"{r.conversions:,}"),
            *(row(f"{stage} (s)", lambda r, s=stage: f"{r.seconds[s]:.3f}") for stage in STAGES),
            row("total task time (s)", lambda r: f"{r.total():.3f}"),
            row("stages but call_ihc_api (s)", lambda r: f"{r.total(without='call_ihc_api'):.3f}"),
            row("requests (counted by the server)", lambda r: f"{r.requests:,}"),
            row(f"lower bound max(ceil(journeys / {args.max_journeys}), ceil(sessions / {args.max_sessions}))",
                lambda r: f"{lower_bound(r):,}"),
            row(f"latency bound: requests x {args.latency_ms:g} ms / {args.concurrency} (s)",
                lambda r: f"{latency_bound(r):.3f}"),
            ["floor: one scan of session_sources (s)", f"{floor:.3f}"],
            [f"target: stages but call_ihc_api within {TARGET_OTHER_STAGES_S:g} s",
             verdict(others <= TARGET_OTHER_STAGES_S, f"{others:.2f} s")],
            [f"target: call_ihc_api within {TARGET_API_RATIO}x its latency bound",
             verdict(0 < bound and api <= TARGET_API_RATIO * bound, f"{api / bound:.2f}x" if bound else "no latency")]]
    if len(values) == 3:
        rows.append([f"target: the last day's run under {TARGET_LAST_DAY_S:g} s of task time", "", "",
                     verdict(values[2].total() < TARGET_LAST_DAY_S, f"{values[2].total():.2f} s")])
    width = len(runs) + 1
    lines = [f"### {name}", "", "| | " + " | ".join(label for label, _ in runs) + " |", "|---" * width + "|"]
    lines += ["| " + " | ".join(r + [""] * (width - len(r))) + " |" for r in rows]
    lines += ["", f"Load average over the last minute when it ended: {os.getloadavg()[0]:.1f}."]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, shared with lock_probe.py and report_timing.py; also sets ``last`` (the range's last day),
    prepares the work folder and the Airflow home the stages' hooks use."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=2_470_000, help="sessions generated (default 2,470,000)")
    p.add_argument("--conversions", type=int, default=13_300, help="conversions generated (default 13,300)")
    p.add_argument("--days", type=int, default=30, help="days of the range, with conversions (default 30)")
    p.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1), help="first day (2024-01-01)")
    p.add_argument("--seed", type=int, default=42, help="seed of the generator (default 42)")
    p.add_argument("--latency-ms", type=float, default=100.0, help="latency of every API request (default 100)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--max-journeys", type=int, default=100, help="journeys per request (default 100)")
    p.add_argument("--max-sessions", type=int, default=200, help="sessions per request (default 200)")
    p.add_argument("--indexes", choices=("no", "yes", "both"), default="no",
                   help="create the documented indexes on the sources of the benchmark's copy (default no)")
    p.add_argument("--postgres", action="store_true", help="run on PostgreSQL at 127.0.0.1:5432, user postgres")
    p.add_argument("--db-dir", type=Path, default=ROOT / "data" / "bench", help="cache and work folder")
    args = p.parse_args(argv)
    if args.days < 1 or args.conversions < 1 or args.sessions < args.conversions:
        p.error("--days and --conversions must be at least 1, --sessions at least --conversions")
    args.db_dir, args.last = args.db_dir.resolve(), args.start + dt.timedelta(days=args.days - 1)
    args.work_dir = args.db_dir / "run"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(args.db_dir / "airflow-home"))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    source = cached_database(args)
    with contextlib.closing(sqlite3.connect(source)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if mode != "delete":
        raise SystemExit(f"{source}: journal_mode is {mode}, not a plain rollback-journal file")
    print("\n`" + " ".join(["python scripts/bench.py", *argv]) + "`\n", flush=True)
    print(f"{source.name}: journal_mode {mode}; range {args.start} to {args.last}; API latency "
          f"{args.latency_ms:g} ms, concurrency {args.concurrency}, at most {args.max_journeys} journeys and "
          f"{args.max_sessions} sessions per request; SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs.\n",
          flush=True)
    with local_server(args) as url:
        for indexes in {"no": [False], "yes": [True], "both": [False, True]}[args.indexes]:
            print(f"{measure(args, args.postgres, indexes, source, url)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
