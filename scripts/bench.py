"""Benchmark of the attribution pipeline: ``make bench`` (options: ``make bench ARGS="..."``).

Creates a demo database with the generator (cached in ``--db-dir`` and reused for the same
parameters), starts the local IHC server in its own process, and runs the DAG's stages in a
child process exactly as the DAG's tasks do (``ihc_attribution.tasks.<stage>(context)``,
connections from ``AIRFLOW_CONN_*`` variables in JSON form), on a fresh copy of the database.
It prints one markdown table: database size, journeys and sessions sent, requests against their
lower bound, wall time per stage and in total, peak memory (RSS) of the run, throughput, and the
time SQLite needs to scan ``session_sources`` once (the floor the stages are compared with).

    python scripts/bench.py                                  # 2M sessions, 10k conversions, 30 days
    python scripts/bench.py --latency-ms 100 --max-concurrency 8 --max-sessions 200
    python scripts/bench.py --ratio-check                    # 200k and 2M sessions, with ratios
    python scripts/bench.py --scale 0.1 --repeat 3           # 200k sessions, medians of 3 runs
    python scripts/bench.py --make-run                       # also make run end to end, start-up included

With ``--make-run``, ``make run`` is also timed on a near-empty database of the same range
(:data:`NEAR_EMPTY_SESSIONS` sessions, a conversion a day): what Airflow's start-up and
``dag.test()`` cost whatever the data, the part of the end-to-end time no stage can win back.

The child process runs nothing but the pipeline, so its peak RSS is the run's: the generator
and the IHC server run in processes of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_run import ihc_server_process  # scripts/ is on sys.path when this file runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SESSIONS = 2_000_000
DEFAULT_CONVERSIONS = 10_000
#: Issue 12's goal for ``make run`` on its database: 5x faster than a plain sequential script (40.1 s).
MAKE_RUN_TARGET_S = 8.0
#: Sessions of the near-empty database ``make run`` is also timed on (``--make-run``).
NEAR_EMPTY_SESSIONS = 3_000
# A forced full scan of the table that reads every row: the floor the stages are compared with.
FLOOR_SQL = "SELECT COUNT(*), SUM(LENGTH(channel_name)) FROM session_sources NOT INDEXED"
RUN_ID = "bench"


@functools.cache
def dag_stages() -> tuple[str, ...]:
    """The DAG's task ids in the order they run (the stage list lives in the DAG file only)."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ihc_attribution"]
    return tuple(task.task_id for task in dag.topological_sort())


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration: the data, the API's behaviour and the client's limits."""

    sessions: int = DEFAULT_SESSIONS
    conversions: int = DEFAULT_CONVERSIONS
    start: dt.date = dt.date(2024, 1, 1)
    days: int = 30
    seed: int = 42
    latency_ms: float = 0.0
    max_concurrency: int = 8
    max_journeys: int = 100
    max_sessions: int = 3000
    #: After the range, load the next day's data and run the DAG over that day (a daily run).
    daily: bool = True

    @property
    def end(self) -> dt.date:
        """Last day of the range, inclusive."""
        return self.start + dt.timedelta(days=self.days - 1)

    @property
    def next_day(self) -> dt.date:
        """The day of the daily run: the day after the range."""
        return self.end + dt.timedelta(days=1)

    @property
    def generated_days(self) -> int:
        """Days the generator fills: the range, and the next day when there is a daily run."""
        return self.days + (1 if self.daily else 0)

    @property
    def generated_conversions(self) -> int:
        """Conversions to generate so that the range holds about ``conversions`` of them."""
        return round(self.conversions * self.generated_days / self.days)

    @property
    def db_name(self) -> str:
        """File name of the generated database for these data parameters."""
        return (
            f"bench_{self.sessions}s_{self.conversions}c_{self.start.isoformat()}_{self.days}d"
            f"{'_daily' if self.daily else ''}_seed{self.seed}.db"
        )

    def near_empty(self) -> BenchConfig:
        """The same range, server and limits over a near-empty database: a conversion a day."""
        return dataclasses.replace(self, sessions=NEAR_EMPTY_SESSIONS, conversions=self.days)

    def scaled(self, factor: float) -> BenchConfig:
        """The same configuration with ``factor`` times the data."""
        return dataclasses.replace(
            self,
            sessions=max(1, round(self.sessions * factor)),
            conversions=max(1, round(self.conversions * factor)),
        )


@dataclass
class RunResult:
    """Measurements of one pipeline run."""

    stage_seconds: dict[str, float]
    stage_cpu_seconds: dict[str, float]
    stage_peak_rss_mb: dict[str, float]
    stage_results: dict[str, dict]
    baseline_rss_mb: float
    peak_rss_mb: float
    server_stats: dict[str, Any]
    server_cpu_seconds: float
    api_alone_seconds: float
    floor_seconds: float
    #: The daily run over the next day (empty without one), and what its data added.
    daily_seconds: dict[str, float]
    daily_cpu_seconds: dict[str, float]
    daily_results: dict[str, dict]
    next_day_rows: dict[str, int]
    db_sessions: int
    db_conversions: int
    attributed_rows: int
    #: CPU time of the processes a stage started (the passes split over processes, see sqlite_processes).
    stage_child_cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: Peak RSS of those processes together (see ChildMemory), and how many a full pass starts.
    child_peak_rss_mb: float = 0.0
    child_processes: int = 0

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


@dataclass
class Measured:
    """The runs of one configuration, summarised by their medians."""

    config: BenchConfig
    runs: list[RunResult] = field(default_factory=list)
    generated_seconds: float | None = None
    plans: dict[str, list[str]] = field(default_factory=dict)
    make_run: MakeRunResult | None = None
    #: ``make run`` on :meth:`BenchConfig.near_empty`: Airflow's fixed cost.
    make_run_near_empty: MakeRunResult | None = None

    def median(self, getter) -> float:
        return statistics.median(getter(r) for r in self.runs)

    def spread(self, getter) -> tuple[float, float]:
        values = [getter(r) for r in self.runs]
        return min(values), max(values)


# --------------------------------------------------------------------------------------------
# Database and server
# --------------------------------------------------------------------------------------------


def ensure_database(config: BenchConfig, db_dir: Path) -> tuple[Path, float | None]:
    """The generated database for ``config``, created when missing; returns (path, seconds or None)."""
    path = db_dir / config.db_name
    if path.exists():
        return path, None
    db_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"generating {config.sessions:,} sessions and {config.conversions:,} conversions into {path} ...",
        flush=True,
    )
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable, "-m", "ihc_attribution_dev.demo_data", "--out", str(path),
            "--start", config.start.isoformat(),
            "--end", (config.next_day if config.daily else config.end).isoformat(),
            "--conversions", str(config.generated_conversions),
            "--sessions-per-conversion", repr(config.sessions / config.conversions),
            "--seed", str(config.seed),
        ],
        check=True, cwd=ROOT, env=_child_env(), stdout=subprocess.DEVNULL,
    )
    return path, time.perf_counter() - started


def fresh_copy(source: Path, target: Path) -> Path:
    """Copy the generated database to ``target`` (the run's working copy)."""
    remove_db(target)
    shutil.copyfile(source, target)
    return target


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def connection_env(config: BenchConfig, db_path: Path, server: Server) -> dict[str, str]:
    """The pipeline's connections, as ``AIRFLOW_CONN_*`` variables: the database and the local server."""
    return {
        "AIRFLOW_CONN_ATTRIBUTION_DB": json.dumps({"conn_type": "sqlite", "host": str(db_path.resolve())}),
        "AIRFLOW_CONN_IHC_API": json.dumps(
            {
                "conn_type": "ihc", "host": "127.0.0.1", "port": server.port,
                "schema": "http", "password": server.key,
                "extra": {
                    "conv_type_id": "demo",
                    "max_concurrency": config.max_concurrency,
                    "max_journeys_per_request": config.max_journeys,
                    "max_sessions_per_request": config.max_sessions,
                },
            }
        ),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class Server:
    """A running local IHC server."""

    url: str
    key: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def local_ihc_server(config: BenchConfig, log_path: Path) -> Iterator[Server]:
    """Run the local IHC server (a development double) in its own process."""
    options = (
        "--latency-ms", str(config.latency_ms),
        "--max-journeys", str(config.max_journeys), "--max-sessions", str(config.max_sessions),
        "--log-level", "warning",
    )
    with ihc_server_process(_child_env(), log_path, *options) as (url, key, proc):
        yield Server(url, key, proc.pid)


def measure_floor(db_path: Path, repeat: int = 5) -> float:
    """Median time of a forced full scan of ``session_sources`` (after one warm-up scan)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute(FLOOR_SQL).fetchall()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute(FLOOR_SQL).fetchall()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def query_plans(db_path: Path) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of the journey extraction and of the report, on the run's database."""
    from ihc_attribution import journeys, report
    from ihc_attribution.db import Database

    plans = {}
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        journeys.stage_buyer_sessions(Database(conn), RUN_ID)
        for name, sql, params in (
            ("journey extraction: the one pass over session_sources", journeys._BUYER_SESSIONS_SQL.split(" AS\n", 1)[1], ()),
            ("journey extraction: the journeys", journeys.journeys_sql("sqlite"), (RUN_ID,)),
            ("report", report.report_sql(), (RUN_ID,) * report.report_sql().count("?")),
        ):
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            plans[name] = [row[-1] for row in rows]
    return plans


# --------------------------------------------------------------------------------------------
# The measured run (child process)
# --------------------------------------------------------------------------------------------


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: ``clear_refs`` value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from ``/proc/<pid>/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # not Linux
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _peak_memory_bound(run: RunResult) -> float:
    """An upper bound of the memory in use at once: the run's peak RSS plus that of its processes together."""
    return run.peak_rss_mb + run.child_peak_rss_mb


def _child_memory(m: Measured) -> str:
    peak = m.median(lambda r: r.child_peak_rss_mb)
    if not peak:
        return ""
    processes = int(m.median(lambda r: r.child_processes))
    return (
        f"; the {processes} process(es) a split pass starts, together: {peak:.0f} MB at most, "
        f"so at most {m.median(_peak_memory_bound):.0f} MB in all"
    )


class ChildMemory:
    """Peak RSS of this process's child processes together, sampled every 10 ms while running.

    The kernel's peak RSS of waited children (``RUSAGE_CHILDREN``) counts the copy of the parent
    a child is before it runs its own program, so it would report the parent's size. Here only
    children whose command line names ``marker`` are counted, by their ``VmRSS``, added up over
    those alive at the same moment.
    """

    def __init__(self, marker: str = "sqlite_processes") -> None:
        import threading

        self.marker = marker
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ChildMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
        while not self._stop.wait(0.01):
            try:
                pids = children.read_text().split()
            except OSError:  # not Linux
                return
            total = 0
            for pid in pids:
                try:
                    if self.marker.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
                except OSError:  # ended meanwhile
                    continue
                total += int(match.group(1)) if match else 0
            self.peak_kb = max(self.peak_kb, total)


def _send_again_without_database(tasks: Any, max_sessions: int) -> float:
    """Seconds to send the run's requests again with the same client, without database work.

    The requests are built first and the answers dropped, so this is what the API stage would
    take if reading requests and storing answers cost nothing: the share of the API stage that
    belongs to the client library, the server and the latency.
    """
    from ihc_attribution import api_stage

    with tasks.open_db() as db:
        numbers = [
            no for (no,) in db.query(
                "SELECT request_no FROM attribution_stg_requests WHERE run_id = ? ORDER BY request_no", (RUN_ID,)
            )
        ]
        requests = [api_stage.build_request(db, RUN_ID, no, max_sessions) for no in numbers]
    hook = tasks._ihc_hook()
    started = time.perf_counter()
    hook.compute_ihc(requests, lambda result: None)
    return time.perf_counter() - started


# The next day's rows, held back from the range's run and loaded before the daily run, as a
# loader appends a day: (table, its rows of that day). Costs go with their sessions.
_NEXT_DAY = (
    ("session_sources", "SELECT * FROM session_sources WHERE event_date = ?"),
    ("session_costs", "SELECT * FROM session_costs WHERE session_id IN (SELECT session_id FROM bench_next_day_session_sources)"),
    ("conversions", "SELECT * FROM conversions WHERE conv_date = ?"),
)


def hold_back_next_day(db_path: Path, day: dt.date) -> dict[str, int]:
    """Move the rows of ``day`` out of the source tables (into ``bench_next_day_*``); their counts."""
    counts = {}
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        for table, select in _NEXT_DAY:
            params = (day.isoformat(),) if "?" in select else ()
            conn.execute(f"CREATE TABLE bench_next_day_{table} AS {select}", params)
            counts[table] = conn.execute(f"SELECT COUNT(*) FROM bench_next_day_{table}").fetchone()[0]
        for table, _ in _NEXT_DAY:
            key = "conv_id" if table == "conversions" else "session_id"
            conn.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM bench_next_day_{table})")
    return counts


def load_next_day(db_path: str) -> None:
    """Append the held-back day to the source tables, as a loader would."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=60)) as conn, conn:
        for table, _ in _NEXT_DAY:
            conn.execute(f"INSERT INTO {table} SELECT * FROM bench_next_day_{table}")
            conn.execute(f"DROP TABLE bench_next_day_{table}")


def _run_stages(
    tasks: Any, context: dict, server_pid: int, profile: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Every stage of the DAG in order, with wall time, CPU time and peak RSS of each.

    :param profile: (stage, file): run that stage under cProfile and write its statistics there
        (the stage's times then include the profiler's overhead).
    """
    seconds, cpu, child_cpu, peaks, results = {}, {}, {}, {}, {}
    server_cpu = 0.0
    children_peak_kb = 0
    for stage in dag_stages():
        children = ChildMemory()
        resettable = _reset_peak_rss()
        cpu_started, server_cpu_started = _cpu_seconds(), process_cpu_seconds(server_pid)
        child_cpu_started = _cpu_seconds(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with children:
            if profile and profile[0] == stage:
                profiler = cProfile.Profile()
                results[stage] = profiler.runcall(getattr(tasks, stage), context)
                profiler.dump_stats(profile[1])
            else:
                results[stage] = getattr(tasks, stage)(context)
        children_peak_kb = max(children_peak_kb, children.peak_kb)
        seconds[stage] = time.perf_counter() - started
        cpu[stage] = _cpu_seconds() - cpu_started
        child_cpu[stage] = _cpu_seconds(resource.RUSAGE_CHILDREN) - child_cpu_started
        if stage == "call_ihc_api":
            server_cpu = process_cpu_seconds(server_pid) - server_cpu_started
        peak_kb = _status_kb("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peaks[stage] = peak_kb / 1024
    return {
        "seconds": seconds, "cpu": cpu, "child_cpu": child_cpu, "peaks": peaks, "results": results,
        "server_cpu": server_cpu, "children_peak_mb": children_peak_kb / 1024,
    }


def worker(spec_path: str) -> int:
    """Run every stage of the DAG in order in this process and write the measurements as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    # Import what the stages import before taking the baseline, so that it holds the libraries.
    from airflow.sdk import BaseHook  # noqa: F401

    from ihc_attribution import ihc_hook, sqlite_processes, tasks  # noqa: F401

    context = {
        "run_id": RUN_ID,
        "params": {"start_date": spec["start_date"], "end_date": spec["end_date"]},
    }
    baseline_kb = _status_kb("VmRSS")
    profile = (spec["profile"], spec["profile_out"]) if spec.get("profile") else None
    run = _run_stages(tasks, context, spec["server_pid"], profile)
    with urllib.request.urlopen(f"{spec['server_url']}/stats", timeout=5) as response:
        stats = json.load(response)
    api_alone = _send_again_without_database(tasks, spec["max_sessions"])
    daily = {"seconds": {}, "cpu": {}, "results": {}}
    if spec.get("next_day"):
        load_next_day(spec["db_path"])
        day = spec["next_day"]
        daily = _run_stages(tasks, {"run_id": f"{RUN_ID}-daily", "params": {"start_date": day, "end_date": day}},
                            spec["server_pid"])
    Path(spec["out"]).write_text(
        json.dumps(
            {
                "seconds": run["seconds"],
                "cpu": run["cpu"],
                "peaks": run["peaks"],
                "results": run["results"],
                "baseline_rss_mb": baseline_kb / 1024,
                "peak_rss_mb": max(run["peaks"].values()),
                "server_stats": stats,
                "server_cpu_seconds": run["server_cpu"],
                "api_alone_seconds": api_alone,
                "daily_seconds": daily["seconds"],
                "daily_cpu": daily["cpu"],
                "daily_results": daily["results"],
                "child_cpu": run["child_cpu"],
                "child_peak_rss_mb": run["children_peak_mb"],
                # The task's process makes one part of a split pass itself.
                "child_processes": sqlite_processes.processes_setting() - 1,
            },
            default=str,
        )
    )
    return 0


def work_db_path(config: BenchConfig, db_dir: Path) -> Path:
    """The working copy a run uses (in ``<db-dir>/run/``, with the run's log and CSV)."""
    return db_dir / "run" / f"work_{config.db_name}"


def run_once(
    config: BenchConfig, source_db: Path, db_dir: Path, keep_db: bool, profile: str | None = None
) -> RunResult:
    """One run of the pipeline on a fresh copy of ``source_db`` against a fresh local server."""
    work_db = work_db_path(config, db_dir)
    work_dir = work_db.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    fresh_copy(source_db, work_db)
    next_day_rows = hold_back_next_day(work_db, config.next_day) if config.daily else {}
    with contextlib.closing(sqlite3.connect(work_db)) as conn:
        db_sessions = conn.execute("SELECT COUNT(*) FROM session_sources").fetchone()[0]
        db_conversions = conn.execute("SELECT COUNT(*) FROM conversions").fetchone()[0]
    out_json = work_dir / "bench-run.json"
    spec_path = work_dir / "bench-spec.json"
    log_path = work_dir / "bench-run.log"
    out_json.unlink(missing_ok=True)
    try:
        with local_ihc_server(config, work_dir / "ihc-server.log") as server:
            spec_path.write_text(
                json.dumps(
                    {
                        "start_date": config.start.isoformat(),
                        "end_date": config.end.isoformat(),
                        "out": str(out_json),
                        "server_url": server.url,
                        "server_pid": server.pid,
                        "max_sessions": config.max_sessions,
                        "db_path": str(work_db),
                        "next_day": config.next_day.isoformat() if config.daily else None,
                        "profile": profile,
                        "profile_out": str(work_dir / f"profile_{profile}.prof") if profile else None,
                    }
                )
            )
            env = _child_env(**connection_env(config, work_db, server), ATTRIBUTION_OUTPUT_DIR=str(work_dir / "output"))
            with open(log_path, "w") as log:
                code = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "_worker", str(spec_path)],
                    env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False,
                ).returncode
            if code != 0 or not out_json.exists():
                sys.stdout.write(log_path.read_text(errors="replace")[-6000:])
                raise SystemExit(f"the pipeline run failed (exit code {code}); log: {log_path}")
        data = json.loads(out_json.read_text())
        floor = measure_floor(work_db)
        with contextlib.closing(sqlite3.connect(work_db)) as conn:
            attributed = conn.execute(
                "SELECT COUNT(*) FROM attribution_customer_journey WHERE conv_id IN "
                "(SELECT conv_id FROM attribution_stg_conversions WHERE run_id = ?)",
                (RUN_ID,),
            ).fetchone()[0]
        return RunResult(
            stage_seconds=data["seconds"],
            stage_cpu_seconds=data["cpu"],
            stage_peak_rss_mb=data["peaks"],
            stage_results=data["results"],
            baseline_rss_mb=data["baseline_rss_mb"],
            peak_rss_mb=data["peak_rss_mb"],
            server_stats=data["server_stats"],
            server_cpu_seconds=data["server_cpu_seconds"],
            api_alone_seconds=data["api_alone_seconds"],
            floor_seconds=floor,
            daily_seconds=data["daily_seconds"],
            daily_cpu_seconds=data["daily_cpu"],
            daily_results=data["daily_results"],
            next_day_rows=next_day_rows,
            db_sessions=db_sessions,
            db_conversions=db_conversions,
            attributed_rows=attributed,
            stage_child_cpu_seconds=data["child_cpu"],
            child_peak_rss_mb=data["child_peak_rss_mb"],
            child_processes=data["child_processes"],
        )
    finally:
        if not keep_db:
            remove_db(work_db)


@dataclass(frozen=True)
class MakeRunResult:
    """``make run`` over the range, end to end: a user's first run."""

    seconds: float  # from starting the runner to its exit
    startup_seconds: float  # the runner's own figure: invocation to the first task
    dag_run_seconds: float  # the DAG run, its tasks and Airflow's work between them
    migrated: bool  # the metadata database was created on the way


def measure_make_run(config: BenchConfig, source_db: Path, db_dir: Path) -> MakeRunResult:
    """Time ``scripts/local_run.py run`` (what ``make run`` calls) over the range, end to end.

    A user's first run: a fresh copy of the database (the next day held back, as in the stage
    runs), a new Airflow home (so a new metadata database) and the local server with the
    configured latency and limits, which the runner's ``ihc_api`` connection points at.
    """
    work_dir = db_dir / "run" / "make-run"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    work_db = fresh_copy(source_db, work_dir / f"work_{config.db_name}")
    if config.daily:
        hold_back_next_day(work_db, config.next_day)
    log_path = work_dir / "make-run.log"
    try:
        with local_ihc_server(config, work_dir / "ihc-server.log") as server:
            env = _child_env(
                **connection_env(config, work_db, server),
                AIRFLOW_HOME=str(work_dir / "airflow-home"),
                ATTRIBUTION_RUN_DIR=str(work_dir / "run-dir"),
                ATTRIBUTION_OUTPUT_DIR=str(work_dir / "output"),
            )
            command = [sys.executable, str(ROOT / "scripts" / "local_run.py"), "run",
                       "--start", config.start.isoformat(), "--end", config.end.isoformat()]
            started = time.perf_counter()
            with open(log_path, "w") as log:
                code = subprocess.run(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
            seconds = time.perf_counter() - started
        if code != 0:
            sys.stdout.write(log_path.read_text(errors="replace")[-4000:])
            raise SystemExit(f"make run failed (exit code {code}); log: {log_path}")
        (report_path,) = (work_dir / "run-dir" / "logs").glob("run-*.json")
        report = json.loads(report_path.read_text())
        return MakeRunResult(
            seconds=seconds,
            startup_seconds=float(report["startup"]["seconds"]),
            dag_run_seconds=float(report["runs"][0]["seconds"]),
            migrated=bool(report["metadata_db"]["migrated"]),
        )
    finally:
        remove_db(work_db)


def measure(
    config: BenchConfig,
    db_dir: Path,
    repeat: int,
    keep_db: bool,
    plans: bool,
    profile: str | None = None,
    make_run: bool = False,
) -> Measured:
    """Generate (or reuse) the database and run the pipeline ``repeat`` times."""
    source, generated = ensure_database(config, db_dir)
    measured = Measured(config=config, generated_seconds=generated)
    for i in range(repeat):
        print(
            f"run {i + 1}/{repeat}: {config.sessions:,} sessions, latency {config.latency_ms:g} ms, "
            f"concurrency {config.max_concurrency}, limits {config.max_journeys}/{config.max_sessions} ...",
            flush=True,
        )
        keep = keep_db or (plans and i == repeat - 1)
        result = run_once(config, source, db_dir, keep, profile)
        measured.runs.append(result)
        print(f"  total {result.total_seconds:.2f} s, peak RSS {result.peak_rss_mb:.0f} MB", flush=True)
        if plans and i == repeat - 1:
            work_db = work_db_path(config, db_dir)
            measured.plans = query_plans(work_db)
            if not keep_db:
                remove_db(work_db)
    if make_run:
        print("make run over the range, end to end (new metadata database, fresh copy) ...", flush=True)
        measured.make_run = measure_make_run(config, source, db_dir)
        print(f"  {measured.make_run.seconds:.1f} s", flush=True)
        empty = config.near_empty()
        print(f"make run over the range on a near-empty database ({empty.sessions:,} sessions) ...", flush=True)
        empty_source, _ = ensure_database(empty, db_dir)
        measured.make_run_near_empty = measure_make_run(empty, empty_source, db_dir)
        print(f"  {measured.make_run_near_empty.seconds:.1f} s", flush=True)
    return measured


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt_s(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value:.3f} s"


def _stage_getter(stage: str):
    return lambda r: r.stage_seconds[stage]


def _make_run_budget(m: Measured, requests: int) -> str:
    """What the make-run target leaves for the work on the data, after Airflow's fixed cost and the API's latency."""
    c = m.config
    fixed = m.make_run_near_empty.seconds
    latency = requests * c.latency_ms / 1000 / c.max_concurrency
    left = MAKE_RUN_TARGET_S - fixed - latency
    return (
        f"; Airflow's fixed cost {_fmt_s(fixed)} and the API's latency bound {_fmt_s(latency)} leave "
        f"{left:.2f} s for the other stages' work on {c.sessions:,} sessions, "
        f"{left / m.median(lambda r: r.floor_seconds):.1f}x the floor"
    )


def lower_bound(journeys: int, sessions: int, max_journeys: int, max_sessions: int) -> int:
    """``max(ceil(journeys / max_journeys), ceil(sessions / max_sessions))``."""
    return max(math.ceil(journeys / max_journeys), math.ceil(sessions / max_sessions))


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary_rows(m: Measured) -> list[tuple[str, str]]:
    """(metric, value) rows of one configuration, the targets last."""
    c, first = m.config, m.runs[0]
    pack = first.stage_results["pack_requests"]
    requests_sent = int(m.median(lambda r: r.server_stats["requests"]))
    bound = lower_bound(pack["journeys"], pack["sessions"], c.max_journeys, c.max_sessions)
    over = (requests_sent / bound - 1) * 100 if bound else 0.0
    floor = m.median(lambda r: r.floor_seconds)
    total = m.median(lambda r: r.total_seconds)
    setup = m.median(_stage_getter("setup_tables"))
    spread = len(m.runs) > 1
    rows = [
        ("sessions in the database", f"{first.db_sessions:,}"),
        ("conversions in the database", f"{first.db_conversions:,}"),
        ("journeys sent", f"{int(m.median(lambda r: r.server_stats['journeys'])):,}"),
        ("sessions sent", f"{int(m.median(lambda r: r.server_stats['sessions'])):,}"),
        ("requests sent (counted by the server)", f"{requests_sent:,}"),
        (
            f"lower bound max(ceil(journeys / {c.max_journeys}), ceil(sessions / {c.max_sessions}))",
            f"{bound:,}",
        ),
        ("retries", f"{int(m.median(lambda r: r.stage_results['call_ihc_api'].get('retries', 0)))}"),
    ]
    for stage in dag_stages():
        seconds = m.median(_stage_getter(stage))
        value = _fmt_s(seconds)
        if spread:
            lo, hi = m.spread(_stage_getter(stage))
            value += f" ({lo:.3g} to {hi:.3g})"
        value += f" = {seconds / floor:.1f}x floor, CPU {m.median(lambda r, s=stage: r.stage_cpu_seconds[s]):.2f} s"
        if stage == "call_ihc_api":
            value += f" (IHC server process: CPU {m.median(lambda r: r.server_cpu_seconds):.2f} s)"
        child_cpu = m.median(lambda r, s=stage: r.stage_child_cpu_seconds.get(s, 0.0))
        if child_cpu >= 0.01:
            value += f" (+ {child_cpu:.2f} s in the processes it started)"
        value += f", peak RSS {m.median(lambda r, s=stage: r.stage_peak_rss_mb[s]):.0f} MB"
        if stage == "call_ihc_api":
            value += (
                f"; the same requests sent again without database work: "
                f"{_fmt_s(m.median(lambda r: r.api_alone_seconds))}"
            )
        rows.append((f"stage {stage}", value))
    total_value = _fmt_s(total)
    if spread:
        lo, hi = m.spread(lambda r: r.total_seconds)
        total_value += f" ({lo:.2f} to {hi:.2f})"
    rows += [
        ("total wall time", total_value),
        ("total without setup_tables", _fmt_s(total - setup)),
        (
            "peak RSS of the run",
            (
                f"{m.median(lambda r: r.peak_rss_mb):.0f} MB "
                f"({m.median(lambda r: r.baseline_rss_mb):.0f} MB after the imports, before the first stage)"
                + _child_memory(m)
            ),
        ),
        ("sessions attributed per second (attribution rows / total wall time)", f"{first.attributed_rows / total:,.0f}"),
        ("database sessions per second (sessions in the database / total wall time)", f"{first.db_sessions / total:,.0f}"),
        (f"floor: one full scan of session_sources (`{FLOOR_SQL}`)", _fmt_s(floor)),
    ]
    daily_total = None
    if first.daily_seconds:
        added = first.next_day_rows
        daily_total = m.median(lambda r: sum(r.daily_seconds.values()))
        extract = first.daily_results["extract_journeys"]
        rows.append((
            f"daily run over {c.next_day.isoformat()}, after loading that day "
            f"({added.get('session_sources', 0):,} sessions, {added.get('conversions', 0):,} conversions)",
            f"{_fmt_s(daily_total)} of task time ({extract['journeys']:,} journeys, "
            f"{first.daily_results['pack_requests']['requests']} requests): "
            + ", ".join(
                f"{stage} {_fmt_s(m.median(lambda r, s=stage: r.daily_seconds[s]))}" for stage in dag_stages()
            ),
        ))
    if m.make_run is not None:
        mr = m.make_run
        rows.append((
            "`make run` over the range, end to end (a first run: new metadata database, fresh copy, this server)",
            f"{_fmt_s(mr.seconds)}: {_fmt_s(mr.startup_seconds)} before the first task"
            f"{' (the metadata database created on the way)' if mr.migrated else ''}, "
            f"the DAG run {_fmt_s(mr.dag_run_seconds)}",
        ))
    if m.make_run_near_empty is not None:
        empty = m.make_run_near_empty
        rows.append((
            f"`make run` over the range on a near-empty database ({c.near_empty().sessions:,} sessions, "
            f"{c.near_empty().conversions} conversions): Airflow's start-up and dag.test(), whatever the data",
            f"{_fmt_s(empty.seconds)}: {_fmt_s(empty.startup_seconds)} before the first task, "
            f"the DAG run {_fmt_s(empty.dag_run_seconds)}",
        ))
    # Targets of the benchmark.
    rows.append(("target: requests within 2% of the lower bound", f"{_verdict(over <= 2.0)} ({over:+.1f}%)"))
    ratios = {s: m.median(_stage_getter(s)) / floor for s in dag_stages() if s != "call_ihc_api"}
    over_floor = [f"{s} {r:.1f}x" for s, r in ratios.items() if r > 3.0]
    slowest = max(ratios, key=ratios.get)
    rows.append((
        "target: every stage but call_ihc_api within 3x the floor",
        f"{_verdict(not over_floor)} ({', '.join(over_floor) if over_floor else f'slowest {slowest} {ratios[slowest]:.1f}x'})",
    ))
    if daily_total is not None:
        rows.append(("target: the daily run under 3 s of task time", f"{_verdict(daily_total < 3.0)} ({_fmt_s(daily_total)})"))
    if m.make_run is not None:
        rows.append((
            f"target: `make run` end to end under {MAKE_RUN_TARGET_S:g} s (issue 12: 5x faster than a plain "
            "sequential script)",
            f"{_verdict(m.make_run.seconds < MAKE_RUN_TARGET_S)} ({_fmt_s(m.make_run.seconds)}"
            + (_make_run_budget(m, requests_sent) if m.make_run_near_empty is not None else "")
            + ")",
        ))
    if c.latency_ms:
        latency = c.latency_ms / 1000
        api = m.median(_stage_getter("call_ihc_api"))
        ideal = requests_sent * latency / c.max_concurrency
        waves = math.ceil(requests_sent / c.max_concurrency) * latency
        rows.append(
            (
                f"target: API stage within 1.3x of requests x {latency:g} s / {c.max_concurrency}",
                (
                    f"{_verdict(api <= 1.3 * ideal)} ({_fmt_s(api)} / {_fmt_s(ideal)} = {api / ideal:.2f}x; "
                    f"in whole waves of {c.max_concurrency} requests at least {_fmt_s(waves)} = {waves / ideal:.2f}x)"
                ),
            )
        )
    return rows


def render(m: Measured) -> str:
    c = m.config
    runs = f"median of {len(m.runs)} runs" if len(m.runs) > 1 else "1 run"
    head = (
        f"Range {c.start.isoformat()} to {c.end.isoformat()} ({c.days} days), API latency {c.latency_ms:g} ms, "
        f"max_concurrency {c.max_concurrency}, limits {c.max_journeys} journeys / {c.max_sessions} sessions "
        f"per request, {runs}, {os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version}."
    )
    if m.generated_seconds is not None:
        head += f" The database was generated in {m.generated_seconds:.1f} s (cached for later runs)."
    lines = [head, "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(m)]
    if m.plans:
        lines.append("")
        for name, plan in m.plans.items():
            lines.append(f"Query plan of the {name}:")
            lines += [f"    {step}" for step in plan]
    return "\n".join(lines)


def render_ratio(small: Measured, large: Measured) -> str:
    """Both sizes side by side with the ratios large / small."""

    def row(label: str, getter, fmt: str = "{:.2f}") -> str:
        a, b = small.median(getter), large.median(getter)
        ratio = f"{b / a:.2f}" if a else "n/a"
        return f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |"

    lines = ["| metric | small | large | large / small |", "|---|---|---|---|"]
    lines.append(row("sessions in the database", lambda r: r.db_sessions, "{:,.0f}"))
    lines.append(row("conversions in the database", lambda r: r.db_conversions, "{:,.0f}"))
    lines.append(row("requests sent", lambda r: r.server_stats["requests"], "{:,.0f}"))
    for stage in dag_stages():
        lines.append(row(f"{stage} (s)", _stage_getter(stage)))
    lines.append(row("total wall time (s)", lambda r: r.total_seconds))
    lines.append(row("floor: full scan of session_sources (s)", lambda r: r.floor_seconds, "{:.3f}"))
    lines.append(row("peak RSS (MB)", lambda r: r.peak_rss_mb, "{:.0f}"))
    lines.append(row("peak RSS above the baseline after imports (MB)", lambda r: r.peak_rss_mb - r.baseline_rss_mb, "{:.0f}"))
    lines.append(row("peak RSS of the processes it started, together (MB)", lambda r: r.child_peak_rss_mb, "{:.0f}"))
    lines.append(row("peak memory, at most (MB): the run's + its processes'", _peak_memory_bound, "{:.0f}"))
    ratio = large.median(_peak_memory_bound) / small.median(_peak_memory_bound)
    lines.append(f"| target: peak memory at 10x the data at most 1.5x | | | {_verdict(ratio <= 1.5)} ({ratio:.2f}x) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=None, help=f"sessions in the database (default {DEFAULT_SESSIONS:,})")
    p.add_argument("--conversions", type=int, default=None,
                   help=f"conversions in the database (default {DEFAULT_CONVERSIONS:,})")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the default sessions and conversions (default 1; ignored for a size given explicitly)")
    p.add_argument("--days", type=int, default=30, help="days of the range the DAG runs over (default 30)")
    p.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1),
                   help="first day of the range (default 2024-01-01)")
    p.add_argument("--seed", type=int, default=42, help="seed of the generator (default 42)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency the IHC server adds per request (default 0)")
    p.add_argument("--max-concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--max-journeys", type=int, default=100, help="journeys per request (default 100)")
    p.add_argument("--max-sessions", type=int, default=3000, help="sessions per request (default 3000; free accounts 200)")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the table shows medians (default 1)")
    p.add_argument("--ratio-check", action="store_true",
                   help="also run at a tenth of the size and print the ratios large / small")
    p.add_argument("--tenfold", action="store_true",
                   help="also run at ten times the size (minutes: 25M sessions for the issue's 2.47M) "
                        "and print the ratios tenfold / configured (memory and time)")
    p.add_argument("--db-dir", type=Path, default=ROOT / "data" / "bench",
                   help="where generated databases are cached and runs work (default data/bench)")
    p.add_argument("--keep-db", action="store_true", help="keep the working copy the pipeline ran on")
    p.add_argument("--no-plans", action="store_true", help="do not print the query plans")
    p.add_argument("--profile", metavar="STAGE",
                   help="run STAGE under cProfile and write <db-dir>/run/profile_STAGE.prof "
                        "(read it with python -m pstats); that stage's time then includes the profiler's")
    p.add_argument("--make-run", action="store_true",
                   help="also time `make run` over the range end to end (scripts/local_run.py, what a user "
                        "runs: Airflow's start-up and dag.test() included) on a fresh copy with a new metadata "
                        "database, against this server")
    p.add_argument("--no-daily", action="store_true",
                   help="no daily run: by default the day after the range is generated too, held back, then "
                        "loaded after the range's run and run over on its own (the next day's run)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        return worker(argv[1])
    args = build_parser().parse_args(argv)
    if args.repeat < 1 or args.days < 1:
        raise SystemExit("--repeat and --days must be at least 1")
    config = BenchConfig(
        sessions=args.sessions or round(DEFAULT_SESSIONS * args.scale),
        conversions=args.conversions or round(DEFAULT_CONVERSIONS * args.scale),
        start=args.start,
        days=args.days,
        seed=args.seed,
        latency_ms=args.latency_ms,
        max_concurrency=args.max_concurrency,
        max_journeys=args.max_journeys,
        max_sessions=args.max_sessions,
        daily=not args.no_daily,
    )
    db_dir = args.db_dir.resolve()
    db_dir.mkdir(parents=True, exist_ok=True)
    # Hooks read connections from the environment; Airflow only needs a home for its settings.
    os.environ.setdefault("AIRFLOW_HOME", str(db_dir / "airflow-home"))
    plans = not args.no_plans
    if args.profile and args.profile not in dag_stages():
        print(f"--profile: no stage {args.profile!r}; the stages: {', '.join(dag_stages())}", file=sys.stderr)
        return 2
    if args.tenfold:
        base = measure(config, db_dir, args.repeat, args.keep_db, False, make_run=args.make_run)
        large = measure(config.scaled(10), db_dir, 1, args.keep_db, plans)
        print()
        print(render(base))
        print()
        print(render(large))
        print()
        print(render_ratio(base, large))
    elif args.ratio_check:
        small = measure(config.scaled(0.1), db_dir, args.repeat, args.keep_db, False, make_run=args.make_run)
        large = measure(config, db_dir, args.repeat, args.keep_db, plans, make_run=args.make_run)
        print()
        print(render(small))
        print()
        print(render(large))
        print()
        print(render_ratio(small, large))
    else:
        measured = measure(config, db_dir, args.repeat, args.keep_db, plans, args.profile, args.make_run)
        print()
        print(render(measured))
        if args.profile:
            print(f"\nprofile of {args.profile}: {work_db_path(config, db_dir).parent / f'profile_{args.profile}.prof'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
