"""Browser test of the local Airflow (``make up``) and the Attribution report in headless Chromium.

The run over the demo range (``conftest.py``: triggered from the UI's trigger form, it succeeds
and shows on the DAG's pages), its "Attribution report" link and the report's link back, the
Issues tab, clearing one task, the Exported files tab and the chart file. The report's own
views are in ``test_report_views.py``. Screenshots go to ``docs/img/`` (1280 px wide). Uses the
running local Airflow, or starts one and stops it at the end. Opt-in: ``make e2e`` (sets
``RUN_E2E=1`` and counts the checks); skipped by ``make test``.
"""

from __future__ import annotations

import os
import time
from urllib.parse import quote, urlencode

import pytest

from tests.ui.e2e import pages as ui
from tests.ui.e2e.pages import (
    BASE, DAG_ID, END, FRAME, REPORT_PATH, ROOT, RUN_TIMEOUT_S, START, TREND_CHARTS, VIEWPORT, expect,
)

pytestmark = pytest.mark.skipif(os.environ.get("RUN_E2E") != "1", reason="browser test: run it with make e2e")


def test_the_runs_link_opens_the_report_of_its_range(page, run_id):
    # The "Attribution report" link of export_csv opens the report of the run's range inside the UI.
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/export_csv/details")
    extra = page.get_by_role("link", name="Attribution report", exact=True)
    expect(extra).to_be_visible()
    assert f"?start={START}&end={END}" in extra.get_attribute("href")
    expect(page.get_by_text("No Task Instance found")).to_have_count(0)  # the details have loaded
    page.wait_for_load_state("networkidle")
    ui.shot(page, "ui-run-report-link.png")
    extra.click()
    page.wait_for_url(lambda url: url.startswith(f"{BASE}{REPORT_PATH}?start={START}&end={END}"))
    report = page.frame_locator(FRAME)
    expect(report.get_by_role("heading", name="Attribution report")).to_be_visible()
    expect(report.locator('input[name="start"]')).to_have_value(START)
    expect(report.locator('input[name="end"]')).to_have_value(END)
    expect(report.get_by_role("heading", name=f"{START} to {END}, all channels")).to_be_visible()

    # Every channel of the range is labelled on both channel charts, in the totals table's order.
    channels = [r["channel"] for r in ui.table(report, "#channel-totals")]
    in_db = {c for c, *_ in ui.db_rows(START, END)}
    assert set(channels) == in_db and len(channels) == len(in_db) >= 16
    assert "" in channels  # the demo's session without a channel name: "(empty name)" everywhere
    ui.every_channel_labelled(report, "chart-channels", channels)
    ui.every_channel_labelled(report, "chart-roas-channels", channels)

    # Which run built these numbers: this one, with its look-back; its id opens its page in the UI.
    builds = report.locator("#builds")
    expect(builds.get_by_role("link", name=run_id).first).to_be_visible()
    expect(builds).to_contain_text("unlimited")
    ui.fits_the_window(report)
    ui.shot(page, "ui-report-of-run.png", at=report.locator("#figures-title"))
    builds.get_by_role("link", name=run_id).first.click()
    page.wait_for_url(f"{BASE}/dags/{DAG_ID}/runs/**")
    expect(page.locator(FRAME)).to_have_count(0)
    expect(page.get_by_text(run_id).first).to_be_visible()
    page.go_back()
    page.wait_for_url(f"{BASE}/plugin/attribution-report/**")
    expect(page.frame_locator(FRAME).get_by_role("heading", name=f"{START} to {END}, all channels")).to_be_visible()

    # The UI's navigation has the Reports entry.
    page.goto(f"{BASE}/")
    page.get_by_role("link", name="Reports").first.click()
    page.wait_for_url(f"{BASE}/plugin/attribution-report**")
    expect(page.frame_locator(FRAME).get_by_role("heading", name="Attribution report")).to_be_visible()


def test_the_issues_tab(page, run_id):
    report = ui.open_report(page)
    report.get_by_role("link", name="Issues").click()
    issues = report.locator("#issues")
    expect(issues).to_be_visible()
    by_reason = dict(ui.query("SELECT reason, COUNT(*) FROM attribution_issues GROUP BY reason"))
    assert {"no_sessions", "invalid_input"} <= set(by_reason)
    for reason, count in by_reason.items():
        expect(report.locator("#issue-reasons")).to_contain_text(f"{reason}: {count}")
    expect(issues.get_by_role("link", name=run_id).first).to_be_visible()
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-issues.png")
    report.get_by_role("link", name=f"no_sessions: {by_reason['no_sessions']}").click()
    expect(report.locator("#issues tbody tr")).to_have_count(by_reason["no_sessions"])
    assert set(report.locator("#issues tbody tr td:nth-child(3)").all_inner_texts()) == {"no_sessions"}


def test_clearing_one_task_runs_it_again(page, run_id):
    csv_file = ROOT / "output" / f"channel_reporting_{START}_{END}.csv"
    written = csv_file.stat().st_mtime if csv_file.exists() else None
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/export_csv")
    page.get_by_role("button", name="Press shift+c to clear").click()
    clear = page.get_by_role("dialog")
    expect(clear.get_by_text("Affected Tasks: 2")).to_be_visible()  # with its downstream check_run
    clear.get_by_role("button", name="Downstream").click()
    expect(clear.get_by_text("Affected Tasks: 1")).to_be_visible()
    ui.shot(page, "ui-clear-task.png")
    clear.get_by_role("button", name="Confirm").click()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        ti = ui.task_instance(page, run_id, "export_csv")
        if ti["try_number"] >= 2 and ti["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"export_csv not re-run after {RUN_TIMEOUT_S:.0f} s: {ti['state']}"
        time.sleep(2)
    assert ti["state"] == "success"
    assert ui.task_instance(page, run_id, "check_run")["try_number"] == 1  # downstream left alone
    if written is not None:
        assert csv_file.stat().st_mtime > written


def test_the_exported_files_tab_and_the_chart_of_a_range(page, run_id):
    name = f"channel_reporting_{START}_{END}"
    page_totals = ui.totals(ui.open_report(page, urlencode({"start": START, "end": END})))
    page.goto(f"{BASE}{REPORT_PATH}exports")
    report = page.frame_locator(FRAME)
    row = report.get_by_role("row", name=f"{START} \u2192 {END}").first
    expect(row.get_by_role("link", name=f"{name}.csv")).to_be_visible()
    lines = (ROOT / "output" / f"{name}.csv").read_text(encoding="utf-8").splitlines()
    expect(row.locator("td").nth(2)).to_have_text(str(len(lines) - 1))
    ui.fits_the_window(report)
    ui.shot(page, "ui-exports.png")

    # The chart opens inside the UI, with its CSV link; its totals are the report page's.
    row.get_by_role("link", name="open chart").click()
    expect(report.locator("#chart-channels figcaption")).to_have_text("Spend and attributed revenue per channel")
    expect(report.get_by_role("link", name=f"Download the CSV ({name}.csv)")).to_be_visible()
    assert ui.totals(report) == page_totals
    ui.every_channel_labelled(report, "chart-channels", [r["channel"] for r in ui.table(report, "#channel-totals")])


def test_the_chart_file_renders_on_its_own(page, run_id, tmp_path):
    """The chart file of the range, opened from disk (no Airflow around it), as a browser shows it."""
    from ihc_attribution.charts import compute_figures, write_chart
    from ihc_attribution.daterange import range_from_params
    from ihc_attribution.db import Database
    from ihc_attribution.export import read_report

    db = Database.connect_sqlite(ui.db_path())
    try:
        rows = read_report(db, range_from_params({"start_date": START, "end_date": END}))
    finally:
        db.close()
    assert rows, "the run left no report rows for the range"
    chart = write_chart(rows, tmp_path / f"channel_reporting_{START}_{END}.html",
                        f"Channel report {START} to {END}")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1300})
    try:
        page.goto(chart.as_uri())
        expect(page.locator("#chart-roas-channels figcaption")).to_contain_text("ROAS per channel")
        assert page.locator("#channel-totals tbody tr").count() == len(compute_figures(rows).channels)
        channels = [t.channel_name for t in compute_figures(rows).channels]
        ui.every_channel_labelled(page, "chart-channels", channels)
        ui.every_channel_labelled(page, "chart-roas-channels", channels)
        for chart_id in TREND_CHARTS:
            ui.axes_readable(page, chart_id, END)
        ui.shot(page, "report-chart.png")
    finally:
        page.set_viewport_size(VIEWPORT)
