"""Browser test of the local Airflow (``make up``) in headless Chromium.

Logs in, triggers a run of ``ihc_attribution`` over the demo range from the UI's trigger form,
waits for it to succeed, finds it on the DAG's pages, follows the run's "Attribution report" link
to the report of its range (every channel labelled on the channel chart) and the report's link
back to the run, picks a range and two channels and sees the figures change, downloads the CSV of
the selection and compares it and its sums with the database and the page's totals, sees the
demo's issues, and clears one task and watches it run again.
Screenshots go to ``docs/img/``. Uses the running local Airflow, or starts one and stops it at
the end. Opt-in: ``make e2e`` (sets ``RUN_E2E=1``); skipped by ``make test``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import sqlite3
import shutil
import subprocess
import sys
import time
from pathlib import Path
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("RUN_E2E") != "1", reason="browser test: run it with make e2e")

ROOT = Path(__file__).resolve().parents[3]
BASE = os.environ.get("E2E_BASE_URL", "http://localhost:8080")
DAG_ID = "ihc_attribution"
START, END = "2024-01-01", "2024-01-14"  # the demo's conversions, its bad rows included
PICK_START, PICK_END = "2024-01-02", "2024-01-08"
PICK_CHANNELS = ("Paid Search Brand", "Performance Max")
REPORT_PATH = "/plugin/attribution-report/attribution-report/"  # the report app's pages inside the UI
SHOTS = Path(os.environ.get("E2E_SCREENSHOT_DIR", ROOT / "docs" / "img"))
RUN_TIMEOUT_S = float(os.environ.get("E2E_RUN_TIMEOUT", "600"))
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _airflow_up():
    if "airflow_up" not in sys.modules:
        spec = importlib.util.spec_from_file_location("airflow_up", ROOT / "scripts" / "airflow_up.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["airflow_up"] = module
        spec.loader.exec_module(module)
    return sys.modules["airflow_up"]


def _stack_command(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # The test session points AIRFLOW_HOME at a throw-away folder and turns task retries off;
    # the local Airflow keeps the project's own settings.
    env = {k: v for k, v in os.environ.items() if k not in ("AIRFLOW_HOME", "ATTRIBUTION_TASK_RETRIES")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "airflow_up.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def admin_password():
    """The local Airflow's admin password; starts the stack if needed and stops it afterwards."""
    up = _airflow_up()
    was_running = bool(up.running(up.load_state()))
    result = _stack_command("up", timeout=900)
    assert result.returncode == 0, f"make up failed:\n{result.stderr[-4000:]}"
    try:
        yield up.load_secrets()["admin_password"]
    finally:
        if not was_running:
            down = _stack_command("down", timeout=300)
            assert down.returncode == 0, down.stderr[-2000:]


@pytest.fixture(scope="module")
def page(admin_password, tmp_path_factory):
    """A logged-in page of a fresh headless Chromium profile."""
    from playwright.sync_api import expect, sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed (make e2e installs Debian's chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900}, timeout=60_000,
        )
        context.set_default_timeout(30_000)
        context.set_default_navigation_timeout(60_000)
        try:
            tab = context.new_page()
            tab.goto(f"{BASE}/")
            expect(tab.get_by_role("button", name="Sign in")).to_be_visible()
            tab.get_by_label("Username").fill("admin")
            tab.get_by_label("Password").fill(admin_password)
            tab.get_by_role("button", name="Sign in").click()
            tab.wait_for_url(f"{BASE}/")
            assert any(c["name"] == "_token" for c in context.cookies()), "no session cookie after login"
            yield tab
        finally:
            context.close()


def _token(page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "_token")


def _run_state(page, run_id: str) -> dict:
    response = page.request.get(f"{BASE}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}",
                                headers={"Authorization": f"Bearer {_token(page)}"}, timeout=15_000)
    assert response.ok, f"GET dagRun: HTTP {response.status}"
    return response.json()


def _task_instance(page, run_id: str, task_id: str) -> dict:
    response = page.request.get(
        f"{BASE}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}",
        headers={"Authorization": f"Bearer {_token(page)}"}, timeout=15_000,
    )
    assert response.ok, f"GET taskInstance: HTTP {response.status}"
    return response.json()


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    return path


def test_trigger_a_range_from_the_form_and_follow_it_to_the_report(page):
    from playwright.sync_api import expect

    # 1. The DAG's trigger form, with the range as run parameters.
    page.goto(f"{BASE}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    # The form names each param's input element_<param> (its label is not tied to the input).
    dialog.locator('input[name="element_start_date"]').fill(START)
    dialog.locator('input[name="element_end_date"]').fill(END)
    dialog.locator('input[name="element_end_date"]').blur()
    _shot(page, "ui-trigger-form.png")
    with page.expect_response(
        lambda r: r.request.method == "POST" and f"/dags/{DAG_ID}/dagRuns" in r.url, timeout=30_000
    ) as triggered:
        dialog.get_by_role("button", name="Trigger").click()
    assert triggered.value.ok, f"trigger: HTTP {triggered.value.status} {triggered.value.text()[:500]}"
    run = triggered.value.json()
    run_id = run["dag_run_id"]
    assert run["conf"] == {"start_date": START, "end_date": END, "lookback_days": None} or (
        run["conf"].get("start_date"), run["conf"].get("end_date")) == (START, END)

    # 2. The run succeeds (the API is polled with the browser's own session).
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = _run_state(page, run_id)["state"]
    while state not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {state} after {RUN_TIMEOUT_S:.0f} s"
        time.sleep(3)
        state = _run_state(page, run_id)["state"]
    assert state == "success", f"run {run_id} ended {state}; see its task logs in the UI"

    # 3. The DAG's list of runs shows it; its own page shows it succeeded, task by task.
    page.goto(f"{BASE}/dags/{DAG_ID}/runs")
    expect(page.get_by_text(run_id).first).to_be_visible()
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    expect(page.get_by_role("heading", name=run_id).or_(page.get_by_text(run_id).first).first).to_be_visible()
    expect(page.get_by_text("export_csv").first).to_be_visible()
    expect(page.get_by_text("Success").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    _shot(page, "ui-run-success.png")

    # 4. From the run to its report: the "Attribution report" link of export_csv opens the report
    #    of the run's range inside the UI; the report links back to the run.
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/export_csv/details")
    extra = page.get_by_role("link", name="Attribution report", exact=True)
    expect(extra).to_be_visible()
    assert f"?start={START}&end={END}" in extra.get_attribute("href")
    _shot(page, "ui-run-report-link.png")
    extra.click()
    page.wait_for_url(lambda url: url.startswith(f"{BASE}{REPORT_PATH}?start={START}&end={END}"))
    report = page.frame_locator('iframe[title="Reports"]')
    expect(report.get_by_role("heading", name="Attribution report")).to_be_visible()
    expect(report.locator('input[name="start"]')).to_have_value(START)
    expect(report.locator('input[name="end"]')).to_have_value(END)
    _every_channel_label_shows(report)
    builds = report.locator("#builds")
    expect(builds.get_by_role("link", name=run_id).first).to_be_visible()
    expect(builds).to_contain_text("unlimited")
    report.locator('[data-figure="spend"]').scroll_into_view_if_needed()
    _shot(page, "ui-report-of-run.png")
    builds.get_by_role("link", name=run_id).first.click()
    page.wait_for_url(f"{BASE}/dags/{DAG_ID}/runs/**")
    expect(page.locator('iframe[title="Reports"]')).to_have_count(0)
    expect(page.get_by_text(run_id).first).to_be_visible()
    page.go_back()
    page.wait_for_url(f"{BASE}/plugin/attribution-report/**")

    # 5. Pick a range and two channels: the figures and charts change.
    report = page.frame_locator('iframe[title="Reports"]')
    before = report.locator('[data-figure="spend"] .v').inner_text()
    report.locator('input[name="start"]').fill(PICK_START)
    report.locator('input[name="end"]').fill(PICK_END)
    for name in PICK_CHANNELS:
        report.locator("fieldset.channels").get_by_label(name, exact=True).check()
    report.get_by_role("button", name="Show").click()
    expect(report.get_by_role("heading", name=f"{PICK_START} to {PICK_END}, 2 of")).to_be_visible()
    expect(report.locator("#chart-channels .bar-row")).to_have_count(len(PICK_CHANNELS))
    after = report.locator('[data-figure="spend"] .v').inner_text()
    assert after != before
    shown = {r.get_attribute("data-channel") for r in report.locator("#channel-totals tbody tr").all()}
    assert shown == set(PICK_CHANNELS)
    page.wait_for_url(lambda url: url.startswith(f"{BASE}{REPORT_PATH}?start={PICK_START}&end={PICK_END}"))
    _shot(page, "ui-attribution-report.png")
    report.locator("#chart-roas").scroll_into_view_if_needed()
    _shot(page, "ui-attribution-trends.png")

    # 6. The CSV of the selection holds exactly the database's rows, rounded as the export rounds.
    with page.expect_download() as download:
        report.locator("#download-csv").click()
    got = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    expected = _db_rows(PICK_START, PICK_END, PICK_CHANNELS)
    assert len(got) == len(expected) > 0
    for row, (name, day, cost, ihc, revenue) in zip(got, expected, strict=True):
        assert (row["channel_name"], row["date"]) == (name, day)
        assert (Decimal(row["cost"]), Decimal(row["ihc"]), Decimal(row["ihc_revenue"])) == (
            _q(cost, "0.01"), _q(ihc, "0.0001"), _q(revenue, "0.01"))
        assert row["ROAS"] == ("" if cost == 0 else str(_q(revenue / cost, "0.0001")))
        assert row["CPO"] == ("" if ihc == 0 else str(_q(cost / ihc, "0.01")))
    # One number: the page's totals are the sums of its CSV's columns, to the cent.
    totals = report.locator("#channel-totals tfoot td").all_inner_texts()
    cost, ihc, revenue = (sum((Decimal(r[k]) for r in got), Decimal(0)) for k in ("cost", "ihc", "ihc_revenue"))
    assert totals[1:4] == [f"\u20ac{cost:,}", f"{_q(ihc, '0.01'):,}", f"\u20ac{revenue:,}"]
    assert after == f"\u20ac{cost:,}"

    # 7. The demo's issues: conversions without sessions and a malformed session, linked to the run.
    report.get_by_role("link", name="Issues").click()
    issues = report.locator("#issues")
    expect(issues).to_be_visible()
    expect(report.locator("#issue-reasons")).to_contain_text("no_sessions")
    expect(report.locator("#issue-reasons")).to_contain_text("invalid_input")
    expect(issues.get_by_role("link", name=run_id).first).to_be_visible()
    _shot(page, "ui-attribution-issues.png")

    # 8. Clearing one task re-runs just that task: export_csv writes the CSV again.
    csv_file = ROOT / "output" / f"channel_reporting_{START}_{END}.csv"
    written = csv_file.stat().st_mtime if csv_file.exists() else None
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/export_csv")
    page.get_by_role("button", name="Press shift+c to clear").click()
    clear = page.get_by_role("dialog")
    expect(clear.get_by_text("Affected Tasks: 2")).to_be_visible()  # with its downstream check_run
    clear.get_by_role("button", name="Downstream").click()
    expect(clear.get_by_text("Affected Tasks: 1")).to_be_visible()
    _shot(page, "ui-clear-task.png")
    clear.get_by_role("button", name="Confirm").click()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        ti = _task_instance(page, run_id, "export_csv")
        if ti["try_number"] >= 2 and ti["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"export_csv not re-run after {RUN_TIMEOUT_S:.0f} s: {ti['state']}"
        time.sleep(2)
    assert ti["state"] == "success"
    assert _task_instance(page, run_id, "check_run")["try_number"] == 1  # downstream left alone
    if written is not None:
        assert csv_file.stat().st_mtime > written

    # 9. The exported files: the range's CSV, and its chart opening inside the UI with a CSV link.
    page.goto(f"{BASE}{REPORT_PATH}exports")
    report = page.frame_locator('iframe[title="Reports"]')
    row = report.get_by_role("row", name=f"{START} \u2192 {END}").first
    expect(row.get_by_role("link", name=f"channel_reporting_{START}_{END}.csv")).to_be_visible()
    row.get_by_role("link", name="open chart").click()
    expect(report.get_by_role("heading", name="Spend and attributed revenue per channel")).to_be_visible()
    expect(report.get_by_role("link", name=f"Download the CSV (channel_reporting_{START}_{END}.csv)")).to_be_visible()
    _shot(page, "ui-report-chart.png")


def _every_channel_label_shows(report) -> None:
    """Every channel of the totals table has a label on the channel chart, and no two labels overlap."""
    names = report.locator("#channel-totals tbody td:first-child").all_inner_texts()
    labels = report.locator("#chart-channels text.label")
    assert labels.count() == len(names) > 0
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    assert all(box and box["height"] > 0 for box in boxes), "a label is not rendered"
    for upper, lower in zip(boxes, boxes[1:], strict=False):
        assert upper["y"] + upper["height"] <= lower["y"] + 0.5, "two labels overlap"


def _q(value: float, places: str) -> Decimal:
    return Decimal(repr(float(value))).quantize(Decimal(places), ROUND_HALF_UP)


def _db_path() -> str:
    return json.loads(_airflow_up().load_state()["attribution_db_conn"])["host"]


def _db_rows(start: str, end: str, channels: tuple[str, ...]) -> list[tuple]:
    with sqlite3.connect(f"file:{_db_path()}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting "
            f"WHERE date >= ? AND date <= ? AND channel_name IN ({', '.join('?' for _ in channels)}) "
            "ORDER BY date, channel_name",
            (start, end, *channels),
        ).fetchall()


def test_chart_of_the_range_renders_in_the_browser(page, tmp_path):
    """The chart page of the range, built from the database the run just wrote, as a browser shows it."""
    from playwright.sync_api import expect

    from ihc_attribution.charts import channel_totals, write_chart
    from ihc_attribution.daterange import range_from_params
    from ihc_attribution.db import Database
    from ihc_attribution.export import read_report

    db = Database.connect_sqlite(_db_path())
    try:
        rows = read_report(db, range_from_params({"start_date": START, "end_date": END}))
    finally:
        db.close()
    assert rows, "the run left no report rows for the range"
    chart = write_chart(rows, tmp_path / f"channel_reporting_{START}_{END}.html",
                        f"Channel report {START} to {END}")
    page.goto(chart.as_uri())
    expect(page.get_by_role("heading", name="ROAS per channel")).to_be_visible()
    assert page.locator("table tbody tr").count() == len(channel_totals(rows))
    page.set_viewport_size({"width": 1000, "height": 1250})
    try:
        _shot(page, "report-chart.png")
    finally:
        page.set_viewport_size({"width": 1400, "height": 900})
