"""``scripts/bench.py`` on a small database: every stage timed, requests at least their lower bound."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("setup_tables", "extract_journeys", "pack_requests", "call_ihc_api",
          "load_attribution", "build_report", "export_csv", "check_run")


def _rows(table: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in table.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_the_benchmark_times_every_stage_of_each_run_on_a_small_database(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--sessions", "20000", "--conversions", "200",
         "--days", "3", "--latency-ms", "20", "--db-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "journal_mode delete" in run.stdout
    tables = run.stdout.split("\n### ")[1:]
    assert [t.splitlines()[0] for t in tables] == ["SQLite, without indexes on the sources"]
    rows = _rows(tables[0])
    for stage in STAGES:
        assert len(rows[f"{stage} (s)"]) == 3 and all(float(v) > 0 for v in rows[f"{stage} (s)"]), stage
    requests = [int(v.replace(",", "")) for v in rows["requests (counted by the server)"]]
    bounds = [int(v.replace(",", "")) for v in next(v for k, v in rows.items() if k.startswith("lower bound"))]
    assert all(r >= b > 0 for r, b in zip(requests, bounds, strict=True)), (requests, bounds)
    assert re.match(r"(met|NOT met) \(", rows["target: stages but call_ihc_api within 5 s"][0])
    # The benchmark's copies are gone; only the generated database stays cached.
    assert [p.name for p in tmp_path.glob("*.db")] and not list((tmp_path / "run").glob("*.db"))


def _source_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN "
            "('session_sources', 'session_costs', 'conversions')")}


def test_indexes_are_created_on_the_benchmarks_copy_only_and_only_when_asked(source_db, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    # The scenario's database becomes the tasks' connection meanwhile; restored afterwards.
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", "")
    monkeypatch.delenv("ATTRIBUTION_DB_CONN_ID", raising=False)
    cached = _source_indexes(source_db)
    day = dt.date(2023, 9, 4)
    for indexes in (False, True):
        with bench.scenario_database(False, indexes, source_db, tmp_path, day) as (conn_json, held):
            copy = Path(json.loads(conn_json)["host"])
            added = _source_indexes(copy) - cached
            assert added == ({"ix_session_sources_user_id", "ix_session_sources_event_date"} if indexes else set())
            assert held["session_sources"] and held["conversions"]
            with sqlite3.connect(copy) as conn:
                assert conn.execute("SELECT COUNT(*) FROM conversions WHERE conv_date = ?", (str(day),)).fetchone() == (0,)
        assert not copy.exists()
    assert _source_indexes(source_db) == cached
