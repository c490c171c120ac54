"""Shared pieces of the reliability tests.

Connections come from the environment, as in a deployment; a DAG run is replayed by calling the
task bodies of :mod:`ihc_attribution.tasks` in order with a minimal context. Result tables are
compared as sorted tuples, and a whole database can be reduced to one digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from tests.helpers import dag_stages

STAGES = dag_stages()

API_KEY = "reliability-key-3c9e71"
ROOT = Path(__file__).resolve().parents[2]

#: Extras of the IHC connection in these tests: small requests (many of them), short waits.
DEFAULT_EXTRA: dict[str, Any] = {
    "conv_type_id": "demo",
    "max_journeys_per_request": 3,
    "max_sessions_per_request": 3000,
    "max_concurrency": 2,
    "timeout": 5,
    "max_retries": 0,
    "backoff_base": 0.0,
    "backoff_max": 0.0,
}


def connection_env(
    db_path: Path, base_url: str, output_dir: Path, *, api_key: str = API_KEY, **extra: Any
) -> dict[str, str]:
    """Environment of a run: the two connections (JSON form) and the CSV folder."""
    url = urlparse(base_url)
    ihc = {
        "conn_type": "ihc",
        "host": url.hostname,
        "port": url.port,
        "schema": url.scheme,
        "password": api_key,
        "extra": {**DEFAULT_EXTRA, **extra},
    }
    return {
        "AIRFLOW_CONN_ATTRIBUTION_DB": json.dumps({"conn_type": "sqlite", "host": str(db_path)}),
        "AIRFLOW_CONN_IHC_API": json.dumps(ihc),
        "ATTRIBUTION_OUTPUT_DIR": str(output_dir),
    }


def context(run_id: str, start: str, end: str) -> dict[str, Any]:
    """The part of an Airflow task context the task bodies read."""
    return {"run_id": run_id, "params": {"start_date": start, "end_date": end}}


def run_stages(ctx: dict[str, Any], stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
    """Run task bodies in order in this process; return what each would push to XCom."""
    from ihc_attribution import tasks

    return {name: getattr(tasks, name)(ctx) for name in stages}


def result_tables(db_path: Path) -> dict[str, list[tuple]]:
    """The tables a run publishes, sorted; issues without ``recorded_at``."""
    with sqlite3.connect(db_path) as conn:
        return {
            "attribution": conn.execute(
                "SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2"
            ).fetchall(),
            "reporting": conn.execute(
                "SELECT channel_name, date, round(cost, 9), round(ihc, 9), round(ihc_revenue, 9) "
                "FROM channel_reporting ORDER BY 1, 2"
            ).fetchall(),
            "issues": conn.execute(
                "SELECT conv_id, reason, detail, run_id FROM attribution_issues ORDER BY 1, 2"
            ).fetchall(),
        }


def source_tables(db_path: Path) -> dict[str, list[tuple]]:
    """Every row of the three source tables."""
    with sqlite3.connect(db_path) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("session_sources", "conversions", "session_costs")
        }


def db_digest(db_path: Path) -> str:
    """One hash over the schema and every row of every table (rows sorted)."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        objects = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        ).fetchall()
        for kind, name, sql in objects:
            digest.update(repr((kind, name, sql)).encode())
            if kind == "table":
                rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
                for row in sorted(rows, key=repr):
                    digest.update(repr(row).encode())
    finally:
        conn.close()
    return digest.hexdigest()


def request_states(db_path: Path, run_id: str) -> dict[str, int]:
    """Status -> number of the run's planned API requests (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return dict(
            conn.execute(
                "SELECT status, COUNT(*) FROM attribution_stg_requests WHERE run_id = ? GROUP BY status", (run_id,)
            ).fetchall()
        )
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        conn.close()


def server_requests(base_url: str) -> int:
    """``compute_ihc`` requests the local server has received so far."""
    return int(requests.get(f"{base_url}/stats", timeout=5).json()["requests"])


def server_stats(base_url: str) -> dict[str, Any]:
    """The local server's counters (``GET /stats``)."""
    return requests.get(f"{base_url}/stats", timeout=5).json()


def start_driver(
    run_id: str,
    start: str,
    end: str,
    env: dict[str, str],
    *,
    faults: list[dict] | None = None,
    trace: Path | None = None,
):
    """Start :mod:`tests.reliability.driver` for one run in a new process (stdout/stderr piped)."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "RELIABILITY_FAULTS": json.dumps(faults or [])}
    if trace is not None:
        full_env["RELIABILITY_TRACE"] = str(trace)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.driver", run_id, start, end],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_trace(path: Path) -> list[dict]:
    """The events a driver wrote, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
