"""Processes started each in a process group of its own, and recognised and stopped as groups (``make up``/``down``).

psutil is an Airflow dependency, imported where used: `make down` and `make clean` work before `make install`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


class UpError(RuntimeError):
    """The stack could not be started or stopped; the message says why and where to look."""


def tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only: created anew with mode 0600, so no earlier mode survives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def process_identity(pid: int) -> tuple[float, str] | None:
    """Start time and command line of a live process; ``None`` if it is gone or a zombie."""
    import psutil

    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            return round(proc.create_time(), 2), " ".join(proc.cmdline())
    return None


def group_members(pgid: int) -> list[int]:
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def stop_groups(groups: dict[str, int], timeout: float) -> None:
    """SIGTERM each process group, after ``timeout`` s SIGKILL what is left; ``UpError`` if one survives."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        for name, pgid in groups.items():
            print(f"  stopping {name} (process group {pgid})" if sig == signal.SIGTERM
                  else f"  {name} did not stop within {timeout:.0f} s; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while (groups := {n: g for n, g in groups.items() if group_members(g)}) and time.monotonic() < deadline:
            time.sleep(0.3)
        if not groups:
            return
    raise UpError(f"still running after SIGKILL: {', '.join(groups)}")


def wait_until(what: str, check, timeout: float, watch: dict[str, int], log_dir: Path) -> None:
    """Call ``check`` until it is truthy; fail after ``timeout`` s, or once a watched process exits (with the
    end of its log, ``log_dir/<name>.log``)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if check():
                return
        if dead := [name for name, pid in watch.items() if process_identity(pid) is None]:
            raise UpError(f"{dead[0]} exited while waiting for {what}:\n{tail(log_dir / f'{dead[0]}.log')}")
        if time.monotonic() > deadline:
            raise UpError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
