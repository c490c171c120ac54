"""Run the ``ihc_attribution`` DAG locally through ``dag.test()`` (``make demo``/``run``/``backfill``).

Without ``AIRFLOW_CONN_ATTRIBUTION_DB`` / ``AIRFLOW_CONN_IHC_API`` the demo database and a local IHC server
(free port, throw-away key) are used. Airflow's output goes to ``.run/logs/<command>-<time>-<pid>.log``, each
run's states and results to the ``.json`` next to it; the command succeeds only if every run and task did.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from local_env import DEMO_DB, ROOT, RunnerError, airflow_env, ensure_demo_db, ihc_conn, ihc_server_process, sqlite_conn

DAG_ID = "ihc_attribution"
RUN_DIR = Path(os.environ.get("ATTRIBUTION_RUN_DIR", ROOT / ".run"))
SUMMARY_TASK, EXPORT_TASK = "check_run", "export_csv"
PERMANENT_LINE = re.compile(r"(\w+(?:Error|Exception): .*?\(not retried: [^)]*\))")


@contextlib.contextmanager
def connections(env) -> Iterator[Path | None]:
    """Point the connections ``env`` lacks at the demo database and the local IHC server; yield the database file."""
    if "AIRFLOW_CONN_ATTRIBUTION_DB" not in env:
        env["AIRFLOW_CONN_ATTRIBUTION_DB"] = sqlite_conn(ensure_demo_db())
    db_path = None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        db_path = Path(json.loads(env["AIRFLOW_CONN_ATTRIBUTION_DB"])["host"])
    if "AIRFLOW_CONN_IHC_API" in env:
        yield db_path
        return
    log_path = RUN_DIR / "ihc-server.log"
    with ihc_server_process(env, log_path) as (port, key):
        print(f"local IHC server (development double) on port {port}, log {log_path}", flush=True)
        env["AIRFLOW_CONN_IHC_API"] = ihc_conn(port, key)
        yield db_path


def lock_path(logical_date: dt.datetime) -> Path:
    stamp = logical_date.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%S.%fZ")
    return RUN_DIR / "locks" / f"{DAG_ID}__{stamp}.lock"


@contextlib.contextmanager
def file_lock(path: Path, say, what: str) -> Iterator[None]:
    """An exclusive ``flock`` (the kernel releases it however its holder exits); say when waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{what} is in use by another runner; waiting for it (lock {path}) ...")
            waited = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            say(f"  {what}: lock acquired after {time.monotonic() - waited:.1f} s")
        yield


def prepare(say, specs: list[dict]):
    """Migrate the metadata database if it is behind, parse the DAG and write it there; return both.

    Under a lock: concurrent first runs would otherwise migrate at once, or both insert the DAG's
    asset and one fail on the unique constraint."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.utils import db

    manager, bags = DagBundlesManager(), []
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bags.append((bundle, BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)))
    with file_lock(RUN_DIR / "locks" / "airflow-metadata-db.lock", say, "the Airflow metadata database"):
        try:
            db.check_migrations(timeout=0)
            migrated = False
        except TimeoutError:
            say("creating or upgrading the Airflow metadata database ...")
            db.upgradedb()
            migrated = True
        manager.sync_bundles_to_db()
        for bundle, bag in bags:
            sync_bag_to_db(bag, bundle.name, bundle.version)
    dag = next((bag.dags[DAG_ID] for _, bag in bags if DAG_ID in bag.dags), None)
    if dag is None:
        folders = ", ".join(str(bundle.path) for bundle, _ in bags) or "no DAG bundle configured"
        errors = "; ".join(f"{path}: {err}" for _, bag in bags for path, err in bag.import_errors.items()) or "none"
        raise RunnerError(f"DAG {DAG_ID} not found in {folders} (import errors: {errors})")
    # Airflow marks a run whose data interval starts before the DAG's start date successful without running a task.
    timetable = coerce_to_core_timetable(dag.timetable)
    for spec in (s for s in specs if s["logical_date"]):
        if timetable.infer_manual_data_interval(run_after=spec["logical_date"]).start < dag.start_date:
            raise RunnerError(
                f"{spec['label']} is before the DAG's start date {dag.start_date:%Y-%m-%d}: Airflow would mark its run "
                f"successful without running a task. Set ATTRIBUTION_START_DATE to a date on or before the first day, "
                f"e.g. ATTRIBUTION_START_DATE={specs[0]['label']} make backfill ...")
    return dag, migrated


def _state(value) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def run_once(dag, spec: dict, say) -> dict:
    """One DAG run through ``dag.test()``, and what it recorded. ``dag.test()`` replaces a run of the same logical
    date: a day runs under the lock of its logical date, a range run gets a date of its own, to the microsecond."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    dated = spec["logical_date"] is not None
    logical_date = spec["logical_date"] or dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    lock = file_lock(lock_path(logical_date), say, f"the DAG run at {logical_date.isoformat()}")
    with lock if dated else contextlib.nullcontext():
        print(f"\n=== {spec['label']}: dag.test(logical_date={logical_date.isoformat()}, run_conf={spec['conf']})", flush=True)
        try:
            run_id = dag.test(logical_date=logical_date, run_conf=spec["conf"]).id
            with create_session() as session:
                dag_run = session.get(DagRun, run_id)
                tis = {ti.task_id: ti for ti in dag_run.get_task_instances(session=session)}
                tasks = {t: _state(tis[t].state) if t in tis else None for t in dag.task_ids}
                result = {
                    "run_id": dag_run.run_id, "state": _state(dag_run.state), "tasks": tasks,
                    "tries": {t: ti.try_number for t, ti in tis.items()},
                    **{key: tis[t].xcom_pull(task_ids=t, session=session) if tasks.get(t) == "success" else None
                       for key, t in (("summary", SUMMARY_TASK), ("export", EXPORT_TASK))},
                }
        except Exception as exc:  # recorded and reported as a failed run, never hidden
            traceback.print_exc()
            result = {"state": "error", "error": f"{type(exc).__name__}: {exc}", "tasks": {}}
    return {**result, "label": spec["label"], "seconds": round(time.monotonic() - started, 2)}


def run_succeeded(run: dict) -> bool:
    """The DAG run succeeded, every task of the DAG ran in it and succeeded, and it has a summary."""
    tasks = run.get("tasks") or {}
    return run.get("state") == "success" and bool(tasks) and set(tasks.values()) == {"success"} and run.get("summary") is not None


def run_all(specs: list[dict], log_path: Path) -> dict:
    """Run ``specs`` in order, stopping at the first failed run; return what happened, also written as JSON."""
    started = time.monotonic()
    # Airflow writes to the process's own stdout and stderr: they go to the log meanwhile.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

    def say(message: str) -> None:
        print(message, file=terminal, flush=True)
        print(message, flush=True)

    result: dict = {"runs": [], "error": None, "metadata_db": None}
    try:
        dag, migrated = prepare(say, specs)
        result.update(metadata_db={"migrated": migrated}, startup={"seconds": round(time.monotonic() - started, 2)})
        for number, spec in enumerate(specs):
            ready = f" (Airflow started in {result['startup']['seconds']:.1f} s)" if number == 0 else ""
            say(f"--- {spec['label']}: running {len(dag.task_ids)} tasks{ready} ...")
            result["runs"].append(run := run_once(dag, spec, say))
            say(f"    {run.get('run_id', '?')}: {'success' if run_succeeded(run) else 'FAILED'} in {run['seconds']:.1f} s")
            if not run_succeeded(run):
                break
    except Exception as exc:
        traceback.print_exc()
        result["error"] = str(exc) if isinstance(exc, RunnerError) else f"{type(exc).__name__}: {exc}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        terminal.close()
    log_path.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    return result


def failure_report(run: dict, log_path: Path) -> list[str]:
    """Each failed task with its attempts, log line and last error, and the tasks not run."""
    lines = [f"run {run.get('run_id', '?')} ({run['label']}): DAG run state {run.get('state')}"]
    lines += [f"  the run raised {run['error']}"] if run.get("error") else []
    log = log_path.read_text(errors="replace").splitlines()
    not_run: dict[str, list[str]] = {}
    for task_id, state in (run.get("tasks") or {}).items():
        if state == "success":
            continue
        marker = f"<TaskInstance: {DAG_ID}.{task_id} {run.get('run_id')} "
        starts = [n for n, text in enumerate(log, 1) if "[DAG TEST] running task" in text and marker in text]
        if not state or not starts:
            not_run.setdefault(state or "no task instance", []).append(task_id)
            continue
        attempt = log[starts[-1]:]
        attempt = attempt[:next((i for i, t in enumerate(attempt) if "[DAG TEST] end task" in t), len(attempt))]
        # A permanent error is one log line without a traceback ("RangeError: ... (not retried: ...)"); others
        # end their traceback with "SomeError: ...".
        errors = [m[1] if (m := PERMANENT_LINE.search(t)) else t.strip() for t in attempt
                  if len(t) < 2000 and (PERMANENT_LINE.search(t) or t.split(":", 1)[0].strip().endswith(("Error", "Exception"))
                                        or "Exception: " in t)]
        lines.append(f"  task {task_id}: {state} after {run['tries'].get(task_id)} attempt(s); its log: {log_path}:{starts[-1]}")
        lines += [f"    {errors[-1]}"] if errors else []
    lines += [f"  not run ({state}): {', '.join(task_ids)}" for state, task_ids in not_run.items()]
    if run.get("state") == "success" and not not_run and len(lines) == 1:
        lines.append(f"  task {SUMMARY_TASK} returned no summary")
    return lines


def _figures(s: dict) -> tuple[str, str, str, str]:
    """Issues by reason, cost, attributed orders and revenue of a summary (numbers or decimal strings), as printed."""
    cost, orders, revenue = ("-" if s.get(k) is None else f"{float(s[k]):.{d}f}"
                             for k, d in (("cost", 2), ("ihc", 4), ("ihc_revenue", 2)))
    issues = ", ".join(f"{k} {v}" for k, v in sorted((s.get("issues_by_reason") or {}).items())) or "none"
    return issues, cost, orders, revenue


def render_run(run: dict, demo: bool = False) -> list[str]:
    s, export = run["summary"], run.get("export") or {}
    issues, cost, orders, revenue = _figures(s)
    warnings = ", ".join(f"{k} {v}" for k, v in sorted((s.get("source_warnings") or {}).items()) if v)
    return [
        f"run {run['run_id']}: conversions in [{s.get('range_start')}, {s.get('range_end')})",
        f"  conversions: {s.get('conversions')}, attributed: {s.get('attributed')}, issues: {issues}",
        *(["  (the demo data holds a few bad rows on purpose: conversions without sessions, malformed sessions; "
           "listed on the Issues page of the Attribution report)"] if demo and s.get("issues_by_reason") else []),
        *(["  no conversions in this range"] if s.get("conversions") == 0 else []),
        *([f"  note: {s['note']}"] if s.get("note") else []),
        f"  API requests: {s.get('requests')}, retries: {s.get('retries')}",
        f"  report over the range: cost {cost}, attributed orders {orders}, attributed revenue {revenue}",
        f"  source data warnings: {warnings or 'none'}",
        *([f"  CSV: {export['path']} ({export.get('rows')} rows)"] if export.get("path") else []),
    ]


def render_backfill(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        s = run["summary"]
        issues, cost, orders, revenue = _figures(s)
        lines.append(f"{run['label']}  {run['run_id']}: conversions {s.get('conversions')}, attributed {s.get('attributed')}, "
                     f"issues {issues}, requests {s.get('requests')}, cost {cost}, attributed orders {orders}, revenue {revenue}"
                     + (" - no conversions in this range" if s.get("conversions") == 0 else ""))
        lines += [f"    note: {s['note']}"] if s.get("note") else []
    total, attributed = (sum(int(r["summary"].get(k) or 0) for r in runs) for k in ("conversions", "attributed"))
    lines.append(f"total over {len(runs)} days: conversions {total}, attributed {attributed}"
                 + (" - no conversions in this range" if total == 0 else ""))
    exports = [r["export"]["path"] for r in runs if (r.get("export") or {}).get("path")]
    return lines + ([f"CSVs: {len(exports)} files in {Path(exports[0]).parent}"] if exports else [])


def plan(command: str, start: str, end: str) -> list[dict]:
    """The DAG runs of a command: one range run, or one scheduled-style run per day."""
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as exc:
        raise RunnerError(f"dates must be YYYY-MM-DD: {exc}") from None
    if last < first:
        raise RunnerError(f"END {end} is before START {start}")
    if command != "backfill":
        return [{"label": f"{start}..{end}", "logical_date": None, "conf": {"start_date": start, "end_date": end}}]
    # dag.test() runs the data interval that ends at the logical date it is given: the day after.
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    return [{"label": day.isoformat(), "conf": None,
             "logical_date": dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)}
            for day in days]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run over the demo range on the demo database and the local server")
    for name in ("run", "backfill"):
        p = sub.add_parser(name)
        p.add_argument("--start", required=True, help="first date, YYYY-MM-DD (inclusive)")
        p.add_argument("--end", required=True, help="last date, YYYY-MM-DD (inclusive)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        if args.command == "demo":
            from ihc_attribution_dev.demo_data import DemoConfig

            args.start, args.end = DemoConfig().start.isoformat(), DemoConfig().end.isoformat()
        specs = plan(args.command, args.start, args.end)
        os.environ.update(airflow_env())  # before Airflow is imported, which reads its settings once
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        log_path = RUN_DIR / "logs" / f"{args.command}-{stamp}-{os.getpid()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"log of this invocation: {log_path}", flush=True)
        with connections(os.environ) as db_path:
            if db_path is not None:
                print(f"database: {db_path}", flush=True)
            result = run_all(specs, log_path)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    runs = result["runs"]
    ok_runs = [r for r in runs if run_succeeded(r)]
    print(f"\nfinished in {time.monotonic() - started:.1f} s", flush=True)
    if ok_runs:
        demo = db_path is not None and db_path.resolve() == DEMO_DB.resolve()
        lines = render_backfill(ok_runs) if args.command == "backfill" else render_run(ok_runs[0], demo)
        print("\n=== attribution results (from each run's check_run) ===\n" + "\n".join(lines))
    problems = [result["error"] or ""]
    problems += [line for run in runs if not run_succeeded(run) for line in failure_report(run, log_path)]
    not_run = [s["label"] for s in specs[len(runs):]]
    if not_run:
        problems.append(f"not run after the failure: {', '.join(not_run)}" if runs else
                        f"no DAG run was made ({', '.join(not_run[:3])}{' ...' if len(not_run) > 3 else ''})")
    if problems := [p for p in problems if p]:
        sys.stdout.flush()
        print("\nFAILED: " + "\n".join(problems) + f"\nlog of this invocation: {log_path}", file=sys.stderr)
        return 1
    print(f"\nlog of this invocation: {log_path}")
    return 0


if __name__ == "__main__":
    code = main()
    # Every run is committed and reported; Airflow's exit handlers (the in-process execution
    # API's among them) would take seconds and have nothing left to save.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
