"""Time a backfill of the local Airflow (``make up``) as the UI's Backfill dialog creates it.

The dialog sends ``POST /api/v2/backfills`` with its form's values: From/To, ``max_active_runs``
1 (the form's default, whatever the DAG's), ``reprocess_behavior`` ``none``. This script sends the
same request, then counts the finished backfill runs of those days every 10 s until all are done
or ``--minutes`` have passed (it then cancels the backfill), and prints the rate per day.

    .venv/bin/python scripts/backfill_timing.py --from 2024-01-01 --to 2024-12-30 [--max-active-runs 1] [--minutes 15]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

from airflow_up import DAG_ID, http_json, load_secrets, load_state, login  # scripts/ is on sys.path when this file runs


def runs_by_state(base: str, token: str, start: str, end: str) -> collections.Counter:
    """The backfill runs of the logical dates [start, end], by state."""
    states: collections.Counter = collections.Counter()
    query = f"run_type=backfill&logical_date_gte={start}T00:00:00Z&logical_date_lte={end}T00:00:00Z&limit=100"
    while True:
        page = http_json("GET", f"{base}/api/v2/dags/{DAG_ID}/dagRuns?{query}&offset={states.total()}", token=token)[1]
        states.update(run["state"] for run in page.get("dag_runs", []))
        if not page.get("dag_runs") or states.total() >= page.get("total_entries", 0):
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
    base, token = login(load_state(), load_secrets())
    body = {"dag_id": DAG_ID, "from_date": f"{args.start}T00:00:00Z", "to_date": f"{args.end}T00:00:00Z",
            "max_active_runs": args.max_active_runs, "reprocess_behavior": args.reprocess, "run_backwards": False}
    started = time.monotonic()
    # Creating a year of runs takes the API server a while on a busy machine.
    backfill = http_json("POST", f"{base}/api/v2/backfills", body, token, timeout=600, expect=(200,))[1]
    print(f"backfill {backfill['id']} created: {json.dumps(body)}", flush=True)
    while True:
        time.sleep(10)
        states = runs_by_state(base, token, args.start, args.end)
        elapsed, done = time.monotonic() - started, states["success"] + states["failed"]
        print(f"{elapsed:7.0f} s  {done} runs finished  {dict(states)}", flush=True)
        if states and done == states.total():
            break
        if elapsed > args.minutes * 60:
            http_json("PUT", f"{base}/api/v2/backfills/{backfill['id']}/cancel", token=token, expect=(200,))
            print("time is up: backfill cancelled", flush=True)
            break
    if done:
        print(f"{done} days in {elapsed:.0f} s: {elapsed / done:.1f} s a day", flush=True)
    return 0 if not states["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
