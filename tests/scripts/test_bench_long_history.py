"""``scripts/bench_long_history.py``: the journey rows staged for a long history are bounded by the limit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _staged(*args: str) -> int:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_long_history.py"), "--sessions", "3000",
                          "--conversions", "4", "--max-sessions", "50", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return int(re.search(r"([\d,]+) journey rows staged", run.stdout).group(1).replace(",", ""))


def test_the_benchmark_stages_at_most_the_limit_per_journey_unless_told_to_stage_all():
    assert _staged() <= 4 * 50 < _staged("--stage-all")
