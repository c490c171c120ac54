"""Large read-only passes over a SQLite file, split over several processes.

SQLite runs a statement on one CPU, and its own worker threads contend for its global mutexes
(see :mod:`session_totals`). A pass over millions of source rows is therefore split into parts
that separate processes run at once, each over a read-only connection to the same file. This
module starts them and hands their rows back; the callers decide how a pass is split so that the
result is the single statement's, to the bit.

Other connections see what is committed. In WAL mode they read beside the caller's write lock,
and since the caller's transaction took that lock when it began (``BEGIN IMMEDIATE``), nothing
is committed meanwhile: the processes see the tables as the caller does, except the rows the
caller's transaction has written itself (each caller checks those are not the tables it reads).
Anything that keeps the processes from running (no WAL, a database in memory, a small table, a
process that fails) leaves the work to the single statement.

Each part writes its rows into a SQLite file of its own, which the caller attaches until its
transaction ends: ``INSERT ... SELECT`` from it copies every value exactly, with its type and
bytes, in the database's encoding (:func:`query_tables`). The caller's temporary tables a part
needs (the run's users, say) go the other way in a file too, which every part attaches.

The files of a pass live in a directory of the system's temporary directory
(``attribution-parts-*``) for as long as the caller's transaction. The process that made it
holds a lock on it meanwhile; a directory whose lock nobody holds (its process was killed before
it could remove it) is removed by the next pass that starts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ihc_attribution.db import SQLITE_BUSY_TIMEOUT_MS, Database
from ihc_attribution.settings import env_int

log = logging.getLogger(__name__)

PROCESSES_VARIABLE = "ATTRIBUTION_SQLITE_PROCESSES"
# Below this many rows, starting the processes costs about what they save.
MIN_ROWS = 250_000
# The command each process runs (tests replace it with one that fails).
WORKER = "from ihc_attribution.sqlite_processes import part_main; part_main()"

def processes_setting() -> int:
    """``$ATTRIBUTION_SQLITE_PROCESSES``: processes a large pass over a SQLite file is split over.

    Default: the CPUs this process may run on, at most 4. 1 runs every pass in the task's process.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return env_int(PROCESSES_VARIABLE, min(cpus, 4), minimum=1)


def shared_file(db: Database, table: str) -> tuple[str, int] | None:
    """The file other processes can read beside ``db`` and the largest rowid of ``table``.

    None when they cannot (not SQLite, in memory, not in WAL mode, a table without rowids) or
    when ``table`` is smaller than :data:`MIN_ROWS`.
    """
    if not db.is_sqlite:
        return None
    path = db.sqlite_file()
    if path is None or str(db.scalar("PRAGMA journal_mode")).lower() != "wal":
        return None
    try:
        size = int(db.scalar(f"SELECT MAX(rowid) FROM {table}") or 0)
    except Exception:  # a table without rowids: its size is not known cheaply
        return None
    return (path, size) if size >= MIN_ROWS else None


def rowid_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ranges of rowids that together cover 1 to ``size`` (negative ones in the first)."""
    step = -(-size // parts)
    lows = [-(2**63)] + [part * step + 1 for part in range(1, parts)]
    highs = [low - 1 for low in lows[1:]] + [2**63 - 1]
    return list(zip(lows, highs))


def _start(path: str, job: dict) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", WORKER, path],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    proc.stdin.write(json.dumps(job).encode())  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    proc.stdin = None  # sent: communicate() reads stderr only
    return proc


def _run(path: str, jobs: Sequence[dict]) -> None:
    """Run the jobs (see :func:`run_job`): the first here, the others in processes of their own.

    Raises when one failed (the others are stopped).
    """
    first, *others = jobs
    procs: list[subprocess.Popen] = []
    try:
        procs = [_start(path, job) for job in others]
        run_job(path, first)
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"exit status {proc.returncode}: {err.decode(errors='replace').strip()[-2000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def query_tables(
    db: Database,
    path: str,
    queries: Sequence[str],
    *,
    inputs: bool = False,
    setup: Sequence[str] = (),
) -> list[str]:
    """Run each query on a connection of its own into a table; the tables, attached to ``db``.

    The first query runs in this process (on another read-only connection, while the others run
    in processes of their own). With ``inputs``, the temporary tables of ``db`` as they are in
    its open transaction are written into a file that each part attaches as ``inputs`` before it
    runs ``setup`` (statements, for example the ones that copy them into the temporary tables
    its query reads). The names returned are those of the tables
    (``schema.rows``), in the order of ``queries``: read from them within the open transaction.
    They are detached, and their files removed, when the transaction ends.
    """
    workdir, owner = _new_workdir()
    names: list[str] = []

    def cleanup() -> None:
        for name in names:
            try:
                db.execute(f"DETACH DATABASE {name.split('.')[0]}")
            except Exception as exc:  # the connection is closing: the files go anyway
                log.debug("detaching %s: %s", name, exc)
        shutil.rmtree(workdir, ignore_errors=True)
        owner.close()

    try:
        input_file = _write_inputs(db, Path(workdir) / "inputs.sqlite") if inputs else None
        files = [str(Path(workdir) / f"part{i}.sqlite") for i in range(len(queries))]
        _run(path, [
            {"inputs": input_file, "setup": list(setup), "query": sql, "into": file}
            for sql, file in zip(queries, files)
        ])
        for i, file in enumerate(files):
            schema_name = f"attribution_part{i}"
            db.execute(f"ATTACH DATABASE ? AS {schema_name}", (file,))
            names.append(f"{schema_name}.rows")
    except BaseException:
        cleanup()
        raise
    db.after_transaction(cleanup)
    return names


# The files of a pass live as long as the caller's transaction, and a crash makes them useless:
# written without a journal and without waiting for the disk.
_SCRATCH_FILE = "PRAGMA {schema}.journal_mode = OFF; PRAGMA {schema}.synchronous = OFF;"


def _write_inputs(db: Database, file: Path) -> str:
    """Write the caller's temporary database (its temporary tables) into ``file``; its path.

    SQLite's own image of it, taken within the open transaction: every value exactly, in the
    database's encoding, at the cost of a copy of its pages.
    """
    file.write_bytes(db.conn.serialize(name="temp"))
    return str(file)


_WORKDIR_PREFIX = "attribution-parts-"
_OWNER_LOCK = "owner.lock"
# A directory without its lock file is one being made (or of a version without one): left alone
# for this long.
_UNLOCKED_GRACE_SECONDS = 3600


def _new_workdir() -> tuple[str, object]:
    """A new directory for a pass's files, and the open file whose lock says it is in use.

    Directories of earlier passes that nobody holds any more are removed first.
    """
    remove_abandoned_workdirs()
    workdir = tempfile.mkdtemp(prefix=_WORKDIR_PREFIX)
    try:
        owner = open(Path(workdir) / _OWNER_LOCK, "w")
        try:
            fcntl.flock(owner, fcntl.LOCK_EX)  # released when the file is closed, or its process ends
        except BaseException:
            owner.close()
            raise
    except BaseException:  # a file system without locks: the pass is made without parts
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir, owner


def remove_abandoned_workdirs(parent: str | None = None) -> list[str]:
    """Remove the pass directories in ``parent`` (the temporary directory) whose lock nobody holds.

    A process killed during a pass (SIGKILL, the machine's OOM killer) cannot remove its files;
    its lock goes with it. Returns the directories removed.
    """
    removed = []
    for workdir in sorted(Path(parent or tempfile.gettempdir()).glob(_WORKDIR_PREFIX + "*")):
        try:
            with open(workdir / _OWNER_LOCK, "r+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(workdir, ignore_errors=True)
        except BlockingIOError:  # in use
            continue
        except FileNotFoundError:
            try:
                if time.time() - workdir.stat().st_mtime < _UNLOCKED_GRACE_SECONDS:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(workdir, ignore_errors=True)
        except OSError as exc:  # another user's, a file that is not a directory
            log.debug("leaving %s: %s", workdir, exc)
            continue
        removed.append(str(workdir))
    if removed:
        log.info("removed %d directories of passes whose processes ended before they could: %s",
                 len(removed), ", ".join(removed))
    return removed


def run_job(database: str, job: dict) -> None:
    """Run one part on a read-only connection of its own, into the file ``into``."""
    import sqlite3

    conn = sqlite3.connect(
        f"file:{quote(database)}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None
    )
    try:
        conn.execute("PRAGMA threads = 0")  # as the task's connection (see Database)
        if job.get("inputs"):
            conn.execute("ATTACH DATABASE ? AS inputs", (f"file:{quote(job['inputs'])}?mode=ro",))
        for sql in job.get("setup", ()):
            conn.execute(sql)
        # The part's rows go to a file of its own: they do not take the place of the pages its
        # query reads again and again in the cache of the temporary database.
        conn.execute("ATTACH DATABASE ? AS part", (job["into"],))
        conn.executescript(_SCRATCH_FILE.format(schema="part"))
        conn.execute(f"CREATE TABLE part.rows AS {job['query']}")
    finally:
        conn.close()


def part_main(argv: list[str] | None = None) -> None:
    """A process of :func:`query_tables`: the database as argument, the job on stdin."""
    (database,) = argv if argv is not None else sys.argv[1:]
    run_job(database, json.load(sys.stdin))
