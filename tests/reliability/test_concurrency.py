"""Two runs over overlapping ranges at the same time, in two processes, on one SQLite file.

What keeps them apart is database locking: every stage writes in one transaction that takes the
write lock when it begins (``BEGIN IMMEDIATE``), other writers wait for it (``busy_timeout``),
and readers are not blocked (WAL); staging rows are keyed by run id. This is what lets the DAG run
several runs at once (``max_active_runs``, ``ATTRIBUTION_MAX_ACTIVE_RUNS``, default 4): a
backfill from the UI runs up to that many days at once.

The first run pauses inside its load transaction until the second asks for the write lock, so the
two really collide. The final tables must equal those of the two runs one after the other, in
either order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ihc_attribution_dev.server.config import FaultConfig, ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.helpers import random_db
from tests.reliability.support import (
    API_KEY,
    connection_env,
    context,
    read_trace,
    result_tables,
    run_stages,
    start_driver,
)

RUN_A = ("backfill_a", "2024-01-01", "2024-01-05")
RUN_B = ("backfill_b", "2024-01-03", "2024-01-10")


def _comparable(tables):
    # Conversions of the overlap get their issue row from whichever run loaded last: compare
    # the issues without the run id.
    return {**tables, "issues": [row[:3] for row in tables["issues"]]}


def _sequential(base: Path, tmp_path: Path, url: str, order, monkeypatch) -> dict:
    db = tmp_path / f"sequential-{order[0][0]}.db"
    shutil.copy(base, db)
    for key, value in connection_env(db, url, tmp_path / f"out-{order[0][0]}").items():
        monkeypatch.setenv(key, value)
    for run in order:
        run_stages(context(*run))
    return _comparable(result_tables(db))


def _write_intervals(events: list[dict]) -> list[tuple[float, float]]:
    """(lock acquired, about to commit) of every write transaction of one process."""
    out, opened = [], None
    for event in events:
        if event["event"] == "acquired":
            opened = event["t"]
        elif event["event"] == "releasing":
            out.append((opened, event["t"]))
    return out


def test_concurrent_overlapping_runs_equal_sequential_runs(tmp_path, monkeypatch):
    base = random_db(tmp_path / "base.db", seed=31, users=100, days=10)
    with serve(ServerConfig(api_keys=(API_KEY,), faults=FaultConfig(latency_ms=20))) as url:
        db = tmp_path / "concurrent.db"
        shutil.copy(base, db)
        env = connection_env(db, url, tmp_path / "out")
        trace_a, trace_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        hold = {"stage": "load_attribution", "on": "after_sql", "match": "DELETE FROM attribution_customer_journey",
                "action": "hold", "peer_trace": str(trace_b)}
        wait = {"stage": "call_ihc_api", "on": "stage_start", "action": "wait_for", "event": "hold_start",
                "peer_trace": str(trace_a)}
        procs = [
            start_driver(*RUN_A, env, faults=[hold], trace=trace_a),
            start_driver(*RUN_B, env, faults=[wait], trace=trace_b),
        ]
        outcomes = [proc.communicate(timeout=180) for proc in procs]
        for proc, (_, stderr) in zip(procs, outcomes):
            assert proc.returncode == 0, stderr

        a, b = read_trace(trace_a), read_trace(trace_b)
        # They ran at the same time ...
        a_starts = [e["t"] for e in a if e["event"] == "stage_start"]
        b_starts = [e["t"] for e in b if e["event"] == "stage_start"]
        assert max(a_starts) > min(b_starts) and max(b_starts) > min(a_starts)
        # ... B asked for the write lock while A held it in the middle of its load ...
        hold_start = next(e["t"] for e in a if e["event"] == "hold_start")
        hold_end = next(e["t"] for e in a if e["event"] == "hold_end")
        assert any(hold_start < e["t"] < hold_end for e in b if e["event"] == "begin_requested")
        # ... and no two write transactions of the two processes ever overlapped.
        for a_start, a_end in _write_intervals(a):
            for b_start, b_end in _write_intervals(b):
                assert a_end <= b_start or b_end <= a_start, "two runs wrote at the same time"

        concurrent = _comparable(result_tables(db))
        a_then_b = _sequential(base, tmp_path, url, (RUN_A, RUN_B), monkeypatch)
        b_then_a = _sequential(base, tmp_path, url, (RUN_B, RUN_A), monkeypatch)
    assert concurrent == a_then_b == b_then_a
    assert len(concurrent["attribution"]) > 100 and concurrent["reporting"]

