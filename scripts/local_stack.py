"""What the local Airflow stack (``scripts/airflow_up.py``) needs of processes, files and HTTP: its
error, processes and process groups by PID, ports, private files, the metadata database's URL, JSON
requests and log tails."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.error
import urllib.request
import importlib.util
from pathlib import Path

from local_run import _env

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow_local"


class UpError(RuntimeError):
    """The local stack could not be started; the message says why and where to look."""


def process_identity(pid: int) -> tuple[float, str] | None:
    """Start time and command line of a live process; ``None`` if it is gone or a zombie."""
    # An Airflow dependency, imported here so that `make down` (and `make clean`) work before `make install`.
    import psutil

    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            return round(proc.create_time(), 2), " ".join(proc.cmdline())
    return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def http_json(method: str, url: str, body: dict | None = None, token: str = "", timeout: float = 10.0,
              expect: tuple[int, ...] = ()) -> tuple[int, dict]:
    """One JSON request; returns (status, decoded body). Network errors raise ``OSError``, another
    status than one of ``expect`` (when given) raises ``UpError``."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers |= {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {"raw": raw[:500].decode(errors="replace")}
    # A bulk request answers 200 and lists what failed.
    if expect and (status not in expect or (answer.get("create") or {}).get("errors")):
        raise UpError(f"{method} {url}: HTTP {status} {answer}")
    return status, answer


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # created anew, so no earlier mode survives
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)


def choose_metadata_db(choice: str) -> str:
    """SQLAlchemy URL of the metadata database: PostgreSQL ``airflow_local`` if possible, else SQLite."""
    if choice not in ("auto", "postgres", "sqlite"):
        return choice  # an explicit URL
    sqlite_url = f"sqlite:///{Path(_env()['AIRFLOW_HOME']).resolve() / 'airflow-local.db'}"
    if choice == "sqlite":
        return sqlite_url
    # Airflow 3 opens the metadata database asynchronously too, hence asyncpg.
    if all(importlib.util.find_spec(module) for module in ("psycopg2", "asyncpg")) and port_open("127.0.0.1", 5432):
        return POSTGRES_URL
    problem = "it needs psycopg2, asyncpg and a server on 127.0.0.1:5432"
    if choice == "postgres":
        raise UpError(f"cannot use PostgreSQL for the metadata database: {problem}")
    print(f"metadata database: SQLite, since PostgreSQL is not usable ({problem})", flush=True)
    return sqlite_url
