"""Replay one DAG run in a process of its own, and make that process die or wait on cue.

    python -m tests.reliability.driver RUN_ID START_DATE END_DATE

The task bodies of :mod:`ihc_attribution.tasks` run in DAG order with the connections of
the environment, exactly as the workers run them. Two variables steer the crash and concurrency
tests:

``RELIABILITY_FAULTS``
    a JSON list of faults, each ``{"stage", "on", "nth", "action", ...}``:

    * ``on``: ``stage_start``; ``before_sql`` / ``after_sql`` (the ``nth`` statement of the stage
      whose text contains ``match``); ``after_commit`` (the ``nth`` committed transaction of the
      stage); ``replace`` (the ``nth`` ``os.replace`` of the stage, i.e. the CSV's rename).
    * ``action``: ``kill`` (SIGKILL to itself: no clean-up, no rollback in Python);
      ``hold`` (wait until the process writing ``peer_trace`` asks for a write transaction,
      then a little longer, so that it has to wait for ours); ``wait_for`` (wait until
      ``peer_trace`` holds an event named ``event``).

``RELIABILITY_TRACE``
    a file that gets one JSON line per event: stage start and end (with a digest of the whole
    database at the start of a stage that has a fault), and for every write transaction the
    request for the lock, its acquisition, the end of its body (just before the commit) and the
    commit, with wall-clock times.

Exit status: 0 when the run finished, 1 when a stage raised, 3 when a fault point was never
reached (so a test cannot pass by accident after the SQL it waits for has changed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ihc_attribution.db import Database
from tests.reliability.support import STAGES, context, db_digest, run_stages

_state: dict[str, Any] = {"stage": None, "counts": {}}


def _trace(event: str, **fields: Any) -> None:
    path = os.environ.get("RELIABILITY_TRACE")
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "t": time.time(), "event": event, "stage": _state["stage"], **fields})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()


def _peer_events(fault: dict) -> list[dict]:
    try:
        text = Path(fault["peer_trace"]).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # the peer is writing this line right now
            pass
    return events


def _act(fault: dict) -> None:
    fault["fired"] = True
    action = fault["action"]
    if action == "kill":
        _trace("killed", at=fault["on"])
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hold":
        started = time.time()
        _trace("hold_start")
        deadline = started + float(fault.get("max_seconds", 30))
        while time.time() < deadline:
            if any(e["event"] == "begin_requested" and e["t"] > started for e in _peer_events(fault)):
                time.sleep(float(fault.get("extra_seconds", 0.5)))
                break
            time.sleep(0.02)
        _trace("hold_end")
    elif action == "wait_for":
        deadline = time.time() + float(fault.get("max_seconds", 30))
        while time.time() < deadline and not any(e["event"] == fault["event"] for e in _peer_events(fault)):
            time.sleep(0.02)
        _trace("waited", for_event=fault["event"])
    else:
        raise ValueError(f"unknown action {action!r}")


def _faults() -> list[dict]:
    return json.loads(os.environ.get("RELIABILITY_FAULTS") or "[]")


FAULTS = _faults()


def _check(on: str, sql: str = "") -> None:
    for fault in FAULTS:
        if fault.get("fired") or fault["stage"] != _state["stage"] or fault["on"] != on:
            continue
        if on in ("before_sql", "after_sql") and fault["match"] not in sql:
            continue
        key = (id(fault), on)
        _state["counts"][key] = _state["counts"].get(key, 0) + 1
        if _state["counts"][key] == int(fault.get("nth", 1)):
            _act(fault)


def _wrap_statement(name: str) -> None:
    original = getattr(Database, name)

    def wrapper(self, sql, *args, **kwargs):
        _check("before_sql", sql)
        result = original(self, sql, *args, **kwargs)
        _check("after_sql", sql)
        return result

    setattr(Database, name, wrapper)


def _install() -> None:
    for name in ("execute", "executemany", "query"):
        _wrap_statement(name)

    original_transaction = Database.transaction

    @contextlib.contextmanager
    def transaction(self):
        outermost = not self._in_transaction
        if outermost:
            _trace("begin_requested")
        with original_transaction(self) as db:
            if outermost:
                _trace("acquired")
            yield db
            if outermost:
                _trace("releasing")
        if outermost:
            _trace("committed")
            _check("after_commit")

    Database.transaction = transaction

    original_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        _check("replace")
        return original_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _db_path() -> Path:
    return Path(json.loads(os.environ["AIRFLOW_CONN_ATTRIBUTION_DB"])["host"])


def main(argv: list[str]) -> int:
    run_id, start, end = argv
    _install()
    ctx = context(run_id, start, end)
    fault_stages = {f["stage"] for f in FAULTS}
    for stage in STAGES:
        _state["stage"] = stage
        digest = db_digest(_db_path()) if stage in fault_stages and _db_path().exists() else None
        _trace("stage_start", digest=digest)
        _check("stage_start")
        try:
            run_stages(ctx, (stage,))
        except Exception:
            traceback.print_exc()
            _trace("stage_failed")
            return 1
        _trace("stage_end")
    _state["stage"] = None
    missed = [f for f in FAULTS if not f.get("fired")]
    if missed:
        print(f"fault point(s) never reached: {missed}", file=sys.stderr)
        return 3
    _trace("run_end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
