"""What the local tools share: the project's paths, Airflow's settings for it, the demo database, the
connections to it and to the local IHC server, and that server in a process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_DB = Path(os.environ.get("ATTRIBUTION_DEMO_DB", ROOT / "data" / "demo.db"))


class RunnerError(Exception):
    """A run that cannot start or cannot be trusted; the message says why and what to do."""


def airflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    env.setdefault("ATTRIBUTION_OUTPUT_DIR", str(ROOT / "output"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_demo_db() -> Path:
    if not DEMO_DB.exists():
        from ihc_attribution_dev.demo_data import generate

        DEMO_DB.parent.mkdir(parents=True, exist_ok=True)
        print(f"creating the demo database {DEMO_DB} ...", flush=True)
        print(f"  {generate(DEMO_DB)}", flush=True)
    return DEMO_DB


def sqlite_conn(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(Path(path).resolve())})


def ihc_conn(port: int, key: str, **extra) -> str:
    """The connection ``ihc_api`` to the local IHC server (``extra``: more connection extras)."""
    return json.dumps({"conn_type": "ihc", "host": "127.0.0.1", "port": port, "schema": "http", "password": key,
                       "extra": {"conv_type_id": "demo", **extra}})


def ihc_server_argv(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "ihc_attribution_dev.server", "--host", "127.0.0.1", "--port", str(port),
            "--conv-type-id", "demo", *options]


@contextlib.contextmanager
def ihc_server_process(env: dict[str, str], log_path: Path, *options: str) -> Iterator[tuple[int, str]]:
    """The local IHC server on a free port with a fresh key, until the block ends: (port, key) once it
    answers ``/health``; RunnerError when it exits or does not answer within 30 s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port, key = sock.getsockname()[1], secrets.token_urlsafe(24)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ihc_server_argv(port, *options), env=dict(env, IHC_API_KEYS=key), stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RunnerError(f"the local IHC server did not start; see {log_path}")
            time.sleep(0.05)
        yield port, key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
