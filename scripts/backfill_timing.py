"""Time a backfill of the local Airflow (``make up``) as the UI's Backfill dialog creates it.

The dialog sends ``POST /api/v2/backfills`` with its form's values: From/To, ``max_active_runs``
1 (the form's default, whatever the DAG's), ``reprocess_behavior`` ``none``. This script sends the
same request, then counts the finished backfill runs of those days every 10 s until all are done
or ``--minutes`` have passed (it then cancels the backfill), and prints the rate per day.

    .venv/bin/python scripts/backfill_timing.py --from 2024-01-01 --to 2024-12-30 [--max-active-runs 1] [--minutes 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from airflow_up import ADMIN_USER, DAG_ID, load_secrets, load_state  # noqa: E402  (scripts/ is not a package)
from local_stack import http_json  # noqa: E402


def runs_by_state(base: str, token: str, start: str, end: str) -> dict[str, int]:
    """The backfill runs of the logical dates [start, end], by state."""
    states: dict[str, int] = {}
    offset = 0
    query = f"run_type=backfill&logical_date_gte={start}T00:00:00Z&logical_date_lte={end}T00:00:00Z&limit=100"
    while True:
        page = http_json("GET", f"{base}/api/v2/dags/{DAG_ID}/dagRuns?{query}&offset={offset}", token=token)[1]
        runs = page.get("dag_runs", [])
        for run in runs:
            states[run["state"]] = states.get(run["state"], 0) + 1
        offset += len(runs)
        if not runs or offset >= page.get("total_entries", 0):
            return states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", required=True)
    parser.add_argument("--to", dest="end", required=True)
    parser.add_argument("--max-active-runs", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=15.0, help="cancel the backfill after this long")
    parser.add_argument("--reprocess", default="none", choices=("none", "failed", "completed"),
                        help="days that already have a run: none (the dialog's default) skips them")
    args = parser.parse_args()
    state, keys = load_state(), load_secrets()
    base = f"http://localhost:{state['api_port']}"
    token = http_json("POST", f"{base}/auth/token", {"username": ADMIN_USER, "password": keys["admin_password"]},
                      expect=(200, 201))[1]["access_token"]
    body = {"dag_id": DAG_ID, "from_date": f"{args.start}T00:00:00Z", "to_date": f"{args.end}T00:00:00Z",
            "max_active_runs": args.max_active_runs, "reprocess_behavior": args.reprocess, "run_backwards": False}
    started = time.monotonic()
    # Creating a year of runs takes the API server a while on a busy machine.
    backfill = http_json("POST", f"{base}/api/v2/backfills", body, token, timeout=600, expect=(200,))[1]
    print(f"backfill {backfill['id']} created: {json.dumps(body)}", flush=True)
    while True:
        time.sleep(10)
        states = runs_by_state(base, token, args.start, args.end)
        elapsed = time.monotonic() - started
        done = states.get("success", 0) + states.get("failed", 0)
        print(f"{elapsed:7.0f} s  {done} runs finished  {states}", flush=True)
        if states and done == sum(states.values()):
            break
        if elapsed > args.minutes * 60:
            http_json("PUT", f"{base}/api/v2/backfills/{backfill['id']}/cancel", token=token, expect=(200,))
            print("time is up: backfill cancelled", flush=True)
            break
    if done:
        print(f"{done} days in {elapsed:.0f} s: {elapsed / done:.1f} s a day", flush=True)
    return 0 if not states.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
