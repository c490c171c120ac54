"""Time the report page: a load and a filter change, on the demo data and on the benchmark's 2.47M sessions.

    python scripts/report_timing.py                      # both databases, server time per request
    python scripts/report_timing.py --browser            # and the browser's load time (headless Chromium)
    python scripts/report_timing.py --only bench --repeat 10

``make report-timing`` runs the first. Each database's sources are copied once into
``data/bench/report_<source>.db`` and the DAG's stages run over their range, as ``make bench`` runs
them. The server time is the report app's own, through its test client; ``--browser`` serves the app
with uvicorn and times Chromium's navigation to its ``load`` event. See docs/ui.md (Page timing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import socket
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import bench  # scripts/ is on sys.path when this file runs
from local_env import ensure_demo_db, sqlite_conn

# Chromium's time from the navigation's start to its load event, in ms.
NAVIGATION_MS = "(() => { const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime; })()"


def use_database(path: Path) -> None:
    os.environ.pop("ATTRIBUTION_DB_CONN_ID", None)
    os.environ["AIRFLOW_CONN_ATTRIBUTION_DB"] = sqlite_conn(path)


def prepared_database(name: str, args: argparse.Namespace) -> Path:
    """The dataset's sources with the pipeline run once over their range (made once, then reused)."""
    source = ensure_demo_db() if name == "demo" else bench.cached_database(args)
    target_path = args.db_dir / f"report_{source.name}"
    if not target_path.exists():
        partial = target_path.with_suffix(".partial")
        reading = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        with contextlib.closing(reading) as src, contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)  # a consistent copy, even of a demo database a local Airflow writes to
        print(f"running the pipeline over {args.start} to {args.last} on a copy of {source.name} ...", flush=True)
        started = time.perf_counter()
        use_database(partial)
        with bench.local_server(args) as url:
            bench.run_stages(url, f"report-{name}", args.start, args.last)
        partial.rename(target_path)
        print(f"  done in {time.perf_counter() - started:.0f} s: {target_path}", flush=True)
    return target_path


def requests(db_path: Path) -> list[tuple[str, str]]:
    """(what, path) of the timed requests, from the database's dates and channels."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        last = conn.execute("SELECT MAX(date) FROM channel_reporting").fetchone()[0]
        first_conv, last_conv = conn.execute("SELECT MIN(conv_date), MAX(conv_date) FROM attribution_credit").fetchone()
        top = [r[0] for r in conn.execute(
            "SELECT channel_name FROM channel_reporting GROUP BY channel_name ORDER BY SUM(ihc_revenue) DESC LIMIT 3")]
    whole = [("start", first_conv), ("end", last_conv)]
    week_end = dt.date.fromisoformat(last) - dt.timedelta(days=7)
    week = [("start", str(week_end - dt.timedelta(days=6))), ("end", str(week_end))]
    return [
        ("load: as first opened (last 30 days, all channels)", "/"),
        (f"load: the conversions' range {first_conv} to {last_conv}", "/?" + urlencode(whole)),
        (f"filter: another range ({week[0][1]} to {week[1][1]})", "/?" + urlencode(week)),
        ("filter: two channels", "/?" + urlencode(whole + [("channel", c) for c in top[:2]])),
        ("filter: three channels as trend lines", "/?" + urlencode(whole + [("line", c) for c in top])),
        ("CSV of the whole range", "/report.csv?" + urlencode(whole)),
    ]


def server_times(app, cases: list[tuple[str, str]], repeat: int) -> list[tuple[str, list[float], int]]:
    """Seconds of ``repeat`` requests of each case after one to warm up, and the size of the last answer."""
    from fastapi.testclient import TestClient

    client, out = TestClient(app), []
    for what, path in cases:
        seconds = []
        for i in range(repeat + 1):
            started = time.perf_counter()
            response = client.get(path)
            seconds += [time.perf_counter() - started] if i else []
            assert response.status_code == 200, f"{path}: HTTP {response.status_code}"
            assert "cannot be read" not in response.text, response.text[:2000]
        out.append((what, seconds, len(response.content)))
    return out


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """The app over HTTP on a free local port, in a thread, until the block ends."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def browser_times(app, cases: list[tuple[str, str]], repeat: int) -> list[tuple[str, list[float], int]]:
    """Chromium's time from navigation start to the load event: each page opened, then each filter submitted
    from the page of the whole range."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("--browser needs Chromium (apt-get install chromium, or make e2e once)")
    pages = [(what, path) for what, path in cases if not path.startswith("/report.csv")]
    out = []
    with served(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        for what, path in pages:
            seconds = []
            for i in range(repeat + 1):  # the first is the warm-up
                tab.goto(base + (path if what.startswith("load") else pages[1][1]), wait_until="load")
                if not what.startswith("load"):
                    submit(tab, parse_qsl(path.removeprefix("/?")))
                if i:
                    seconds.append(tab.evaluate(NAVIGATION_MS) / 1000)
            out.append((what, seconds, int(tab.evaluate("document.documentElement.outerHTML.length"))))
        browser.close()
    return out


def submit(tab, wanted: list[tuple[str, str]]) -> None:
    """Fill the selection form with the dates and tick the channels or lines of ``wanted``; submit it, wait for the load."""
    for name, value in wanted:
        if name in ("start", "end"):
            tab.locator(f'#selection input[name="{name}"]').fill(value)
        else:
            tab.locator(f'input[name="{name}"][value="{value}"]').check()
    with tab.expect_navigation(wait_until="load"):
        tab.get_by_role("button", name="Draw" if any(name == "line" for name, _ in wanted) else "Show").click()


def table(title: str, rows: list[tuple[str, list[float], int]], unit: str) -> str:
    lines = [f"{title}", "", f"| request | median (s) | slowest (s) | {unit} |", "|---|---|---|---|"]
    lines += [f"| {what} | {statistics.median(s):.3f} | {max(s):.3f} | {size:,} |" for what, s, size in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("bench", "demo"), help="one database only")
    p.add_argument("--repeat", type=int, default=5, help="timed requests of each kind (default 5)")
    p.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    p.add_argument("--db-dir", type=Path, default=bench.ROOT / "data" / "bench", help="where the databases are kept")
    p.add_argument("--sessions", type=int, default=2_470_000, help="the benchmark's sessions (2,470,000, as make bench)")
    p.add_argument("--conversions", type=int, default=13_300, help="the benchmark's conversions (13,300)")
    p.add_argument("--days", type=int, default=30, help="the benchmark's days (30)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    datasets = {
        "demo": ("demo data (150,000 sessions, 1,500 conversions, 14 days)", ["--days", "14"]),
        "bench": (f"benchmark ({args.sessions:,} sessions, {args.conversions:,} conversions, {args.days} days)",
                  ["--sessions", str(args.sessions), "--conversions", str(args.conversions), "--days", str(args.days)]),
    }
    print(f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"median and slowest of {args.repeat} requests after one to warm up.\n", flush=True)
    for name in [args.only] if args.only else list(datasets):
        label, bench_args = datasets[name]
        path = prepared_database(name, bench.parse_args([*bench_args, "--db-dir", str(args.db_dir), "--latency-ms", "0"]))
        use_database(path)
        from ihc_attribution.report_ui.app import create_app

        app = create_app(require_auth=False)
        cases = requests(path)
        print(table(f"### {label}: server time per request (report app, test client)",
                    server_times(app, cases, args.repeat), "bytes"), flush=True)
        if args.browser:
            print("\n" + table(f"### {label}: browser, navigation start to load event (headless Chromium)",
                               browser_times(app, cases, args.repeat), "HTML characters"), flush=True)
        print(f"Load average over the last minute: {os.getloadavg()[0]:.1f}.\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
