"""``scripts/report_timing.py`` on a small database: every request of the report page timed, the database kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = ("load: as first opened", "load: the conversions' range", "filter: another range", "filter: two channels",
            "filter: three channels as trend lines", "CSV of the whole range")


def _timing(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report_timing.py"), "--only", "bench", "--sessions", "20000",
         "--conversions", "200", "--days", "3", "--repeat", "2", "--db-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


def test_the_report_page_is_timed_through_the_report_app_on_a_database_the_pipeline_ran_on(tmp_path):
    first = _timing(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "running the pipeline over 2024-01-01 to 2024-01-03" in first.stdout
    table = first.stdout.split("\n### ")[1]
    assert table.startswith("benchmark (20,000 sessions, 200 conversions, 3 days): server time per request")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")][1:]
    assert [next(r for r in REQUESTS if row[0].startswith(r)) for row in rows] == list(REQUESTS)
    for what, median, slowest, size in rows:
        assert 0 < float(median) <= float(slowest) and int(size.replace(",", "")) > 0, what

    # The database the pipeline ran on is kept: the next time only the requests run.
    assert (tmp_path / "report_bench_20000s_200c_2024-01-01_3d_seed42.db").is_file()
    again = _timing(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "running the pipeline" not in again.stdout and "server time per request" in again.stdout
