"""Run the ``ihc_attribution`` DAG locally through ``airflow dags test``.

Used by ``make demo``, ``make run`` and ``make backfill``. Connections come from
``AIRFLOW_CONN_ATTRIBUTION_DB`` and ``AIRFLOW_CONN_IHC_API`` when they are set. Otherwise the
demo database is used (created when missing) and the local IHC server is started on a free port
with a throw-away API key, and stopped after the run.

    python scripts/local_run.py demo
    python scripts/local_run.py run --start 2024-01-01 --end 2024-01-31
    python scripts/local_run.py backfill --start 2024-01-01 --end 2024-01-07
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_DB = Path(os.environ.get("ATTRIBUTION_DEMO_DB", ROOT / "data" / "demo.db"))
DAG_ID = "ihc_attribution"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    env.setdefault("ATTRIBUTION_OUTPUT_DIR", str(ROOT / "output"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_demo_db() -> Path:
    """Create the demo database with the generator's defaults when it does not exist."""
    if not DEMO_DB.exists():
        from ihc_attribution_dev.demo_data import generate

        DEMO_DB.parent.mkdir(parents=True, exist_ok=True)
        print(f"creating the demo database {DEMO_DB} ...", flush=True)
        summary = generate(DEMO_DB)
        print(f"  {summary}", flush=True)
    return DEMO_DB


@contextlib.contextmanager
def ihc_server_process(
    env: dict[str, str], log_path: Path, *options: str
) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """Run the local IHC server in a process of its own, with a fresh key, until the block ends.

    Yields its base URL, the key and the process; ``options`` are further command-line flags.
    """
    port = _free_port()
    key = secrets.token_urlsafe(24)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ihc_attribution_dev.server", "--host", "127.0.0.1", "--port", str(port),
             "--conv-type-id", "demo", *options],
            env=dict(env, IHC_API_KEYS=key), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the local IHC server did not start; see {log_path}") from None
                time.sleep(0.1)
        yield url, key, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_ihc_server(env: dict[str, str]) -> Iterator[None]:
    """Start the local IHC server and point the ``ihc_api`` connection in ``env`` at it."""
    log_path = ROOT / ".run" / "ihc-server.log"
    with ihc_server_process(env, log_path) as (url, key, _):
        port = int(url.rsplit(":", 1)[1])
        print(f"local IHC server (development double) on port {port}, log {log_path}", flush=True)
        env["AIRFLOW_CONN_IHC_API"] = json.dumps(
            {"conn_type": "ihc", "host": "127.0.0.1", "port": port, "schema": "http", "password": key,
             "extra": {"conv_type_id": "demo", "max_concurrency": 4}}
        )
        yield


@contextlib.contextmanager
def connections(env: dict[str, str]) -> Iterator[Path | None]:
    """Use the configured connections, or the demo database and the local server."""
    db_path: Path | None = None
    if "AIRFLOW_CONN_ATTRIBUTION_DB" not in env:
        db_path = ensure_demo_db()
        env["AIRFLOW_CONN_ATTRIBUTION_DB"] = json.dumps({"conn_type": "sqlite", "host": str(db_path.resolve())})
    else:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            db_path = Path(json.loads(env["AIRFLOW_CONN_ATTRIBUTION_DB"])["host"])
    if "AIRFLOW_CONN_IHC_API" in env:
        yield db_path
    else:
        with local_ihc_server(env):
            yield db_path


def _airflow(env: dict[str, str], *args: str, quiet: bool = False) -> None:
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=quiet, text=True)
    if result.returncode != 0:
        if quiet:
            sys.stdout.write(result.stdout[-5000:] + result.stderr[-5000:])
        raise SystemExit(f"`airflow {' '.join(args[:3])} ...` failed with exit code {result.returncode}")


def migrate(env: dict[str, str]) -> None:
    """Create or upgrade the local Airflow metadata database (quietly)."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    _airflow(env, "db", "migrate", quiet=True)


def dags_test(env: dict[str, str], logical_date: str, conf: dict | None = None) -> None:
    """One DAG run in this process tree, without a scheduler; its log goes to ``.run/``."""
    args = ["dags", "test", DAG_ID, logical_date]
    if conf:
        args += ["--conf", json.dumps(conf)]
    log_path = ROOT / ".run" / "dags-test.log"
    log_path.parent.mkdir(exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    with open(log_path, "a") as log:
        log.write(f"\n$ airflow {' '.join(args)}\n")
        log.flush()
        code = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    text = log_path.read_text(errors="replace")
    # The run summary logged by the last task, without the log prefix.
    start = text.rfind("run summary")
    if start >= 0:
        summary = text[start:].split(" [ihc_attribution.tasks]")[0]
        print(summary)
    print(f"task logs: {log_path}", flush=True)
    if code != 0 or "state=success" not in text[text.rfind("DagRun Finished"):]:
        print(text[-6000:])
        raise SystemExit(f"the DAG run failed; see {log_path}")


def print_summary(db_path: Path | None, start: str, end: str, csv_files: list[Path]) -> None:
    """What the run left behind, and where."""
    print("\n=== attribution results ===")
    if db_path is not None and db_path.exists():
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            counts = {
                t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("conversions", "attribution_customer_journey", "channel_reporting", "attribution_issues")
            }
            issues = conn.execute("SELECT reason, COUNT(*) FROM attribution_issues GROUP BY reason").fetchall()
            totals = conn.execute(
                "SELECT ROUND(SUM(cost), 2), ROUND(SUM(ihc), 4), ROUND(SUM(ihc_revenue), 2) FROM channel_reporting "
                "WHERE date >= ? AND date <= ?",
                (start, end),
            ).fetchone()
        print(f"database: {db_path}")
        for table, n in counts.items():
            print(f"  {table}: {n} rows")
        print(f"  issues by reason: {dict(issues) or 'none'}"
              + (" (the demo data holds a few bad rows on purpose: conversions without sessions, malformed "
                 "sessions; listed on the Issues page of the Attribution report)" if issues and db_path == DEMO_DB else ""))
        print(f"  report {start}..{end}: cost {totals[0]}, attributed orders {totals[1]}, attributed revenue {totals[2]}")
    for csv_file in csv_files:
        print(f"CSV: {csv_file.resolve()}" + ("" if csv_file.exists() else " (missing!)"))


def _dates(start: str, end: str) -> list[dt.date]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        raise SystemExit(f"END {end} is before START {start}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run over the demo range on the demo database and the local server")
    for name in ("run", "backfill"):
        p = sub.add_parser(name)
        p.add_argument("--start", required=True, help="first date, YYYY-MM-DD (inclusive)")
        p.add_argument("--end", required=True, help="last date, YYYY-MM-DD (inclusive)")
    args = parser.parse_args(argv)

    env = _env()
    if args.command == "demo":
        from ihc_attribution_dev.demo_data import DemoConfig

        start, end = DemoConfig().start.isoformat(), DemoConfig().end.isoformat()
    else:
        start, end = args.start, args.end
    days = _dates(start, end)
    migrate(env)
    started = time.monotonic()
    with connections(env) as db_path:
        if args.command == "backfill":
            # One scheduled-style run per day, driven by its data interval. `airflow dags test`
            # runs the interval that ends at the date it is given, hence the day after.
            for day in days:
                print(f"--- scheduled-style run for {day} ---", flush=True)
                dags_test(env, f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00+00:00")
        else:
            now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
            dags_test(env, now, {"start_date": start, "end_date": end})
    print(f"\nfinished in {time.monotonic() - started:.1f} s")
    out = Path(env["ATTRIBUTION_OUTPUT_DIR"])
    if args.command == "backfill":
        csv_files = [out / f"channel_reporting_{d.isoformat()}_{d.isoformat()}.csv" for d in days]
    else:
        csv_files = [out / f"channel_reporting_{start}_{end}.csv"]
    print_summary(db_path, start, end, csv_files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
