"""Browser test of the local Airflow (``make up``) and the Attribution report in headless Chromium.

Logs in, triggers a run of ``ihc_attribution`` over the demo range from the UI's trigger form,
waits for it to succeed and finds it on the DAG's pages; then every view of the report:

- the run's "Attribution report" link to the report of its range, and the report's link back;
- the channel charts: one label per channel of the selection, each rendered, inside the chart
  and clear of the next (read from the SVG as the browser lays it out);
- the page's totals against the CSV download of the same selection, to the cent (and the CSV
  against the database), for the whole range and for a range and two channels picked;
- the trend charts: the top channels and "Other", every value against the CSV, readable axes,
  and the lines picked instead;
- IHC beside the rule-based models and the shift against last touch, recomputed from
  ``attribution_credit``;
- the paths to conversion, journey lengths and times to conversion, recomputed from
  ``attribution_credit``;
- the comparison with the previous period against the totals of both periods' pages;
- a date that is not one; the Issues tab; clearing one task; the Exported files tab and the
  chart file.

Screenshots of each view go to ``docs/img/`` (1280 px wide). Uses the running local Airflow, or
starts one and stops it at the end. Opt-in: ``make e2e`` (sets ``RUN_E2E=1``, and counts the
checks); skipped by ``make test``.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from tests.ui.e2e.conftest import CHECKS

pytestmark = pytest.mark.skipif(os.environ.get("RUN_E2E") != "1", reason="browser test: run it with make e2e")

ROOT = Path(__file__).resolve().parents[3]
BASE = os.environ.get("E2E_BASE_URL", "http://localhost:8080")
DAG_ID = "ihc_attribution"
START, END = "2024-01-01", "2024-01-14"  # the demo's conversions, its bad rows included
PICK_START, PICK_END = "2024-01-02", "2024-01-08"
PICK_CHANNELS = ("Paid Search Brand", "Performance Max")
LINES = ("Microsoft Ads", "TikTok Ads", "YouTube Ads")  # none of the top 6 of the demo range
TOP = 6
HALF, PREVIOUS = ("2024-01-08", "2024-01-14"), ("2024-01-01", "2024-01-07")
REPORT_PATH = "/plugin/attribution-report/attribution-report/"  # the report app's pages inside the UI
FRAME = 'iframe[title="Reports"]'
SHOTS = Path(os.environ.get("E2E_SCREENSHOT_DIR", ROOT / "docs" / "img"))
RUN_TIMEOUT_S = float(os.environ.get("E2E_RUN_TIMEOUT", "600"))
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TREND_CHARTS = ("chart-daily-cost", "chart-daily-revenue", "chart-roas", "chart-cpo")
RATIO_CHARTS = ("chart-roas", "chart-cpo")
CENT, FOUR = Decimal("0.01"), Decimal("0.0001")


# --- the stack, the browser, the counted expectations ------------------------------------------


class _Counted:
    """A Playwright expectation that counts itself once it has passed."""

    def __init__(self, assertions):
        self._assertions = assertions

    def __getattr__(self, name):
        check = getattr(self._assertions, name)

        def counted(*args, **kwargs):
            result = check(*args, **kwargs)
            CHECKS["expect"] += 1
            return result

        return counted


def expect(target) -> _Counted:
    from playwright.sync_api import expect as playwright_expect

    return _Counted(playwright_expect(target))


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
    """A logged-in page of a fresh headless Chromium profile (Debian's chromium, not Playwright's download)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed (make e2e installs Debian's chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT, timeout=60_000,
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


def _api(page, path: str) -> dict:
    response = page.request.get(f"{BASE}/api/v2/dags/{DAG_ID}/{path}",
                                headers={"Authorization": f"Bearer {_token(page)}"}, timeout=15_000)
    assert response.ok, f"GET {path}: HTTP {response.status}"
    return response.json()


def _run_state(page, run_id: str) -> dict:
    return _api(page, f"dagRuns/{quote(run_id, safe='')}")


def _task_instance(page, run_id: str, task_id: str) -> dict:
    return _api(page, f"dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}")


def _shot(page, name: str, at=None, height: int | None = None) -> Path:
    """A screenshot of the window, with ``at`` (a locator) scrolled to its top if given, and the
    window ``height`` px high for this one if given."""
    if height:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    try:
        page.mouse.move(0, VIEWPORT["height"] - 1)  # no hover highlight where the last click was
        if at is not None:
            at.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(150)
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / name
        page.screenshot(path=str(path))
    finally:
        if height:
            page.set_viewport_size(VIEWPORT)
    return path


@pytest.fixture(scope="module")
def run_id(page) -> str:
    """A run over the demo range, triggered from the DAG's trigger form; it succeeded."""
    # The DAG's trigger form, with the range as run parameters.
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
    assert (run["conf"].get("start_date"), run["conf"].get("end_date")) == (START, END)

    # The run succeeds (the API is polled with the browser's own session).
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = _run_state(page, run_id)["state"]
    while state not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {state} after {RUN_TIMEOUT_S:.0f} s"
        time.sleep(3)
        state = _run_state(page, run_id)["state"]
    assert state == "success", f"run {run_id} ended {state}; see its task logs in the UI"

    # The DAG's list of runs shows it; its own page shows it succeeded, task by task.
    page.goto(f"{BASE}/dags/{DAG_ID}/runs")
    expect(page.get_by_text(run_id).first).to_be_visible()
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    expect(page.get_by_role("heading", name=run_id).or_(page.get_by_text(run_id).first).first).to_be_visible()
    expect(page.get_by_text("export_csv").first).to_be_visible()
    expect(page.get_by_text("Success").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    _shot(page, "ui-run-success.png")
    return run_id


# --- what the database and the CSV say -----------------------------------------------------------


def _db_path() -> str:
    return json.loads(_airflow_up().load_state()["attribution_db_conn"])["host"]


def _query(sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(f"file:{_db_path()}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def _db_rows(start: str, end: str, channels: tuple[str, ...] = ()) -> list[tuple]:
    where = f" AND channel_name IN ({', '.join('?' for _ in channels)})" if channels else ""
    return _query(
        "SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting "
        f"WHERE date >= ? AND date <= ?{where} ORDER BY date, channel_name", (start, end, *channels))


def _label(name: str) -> str:
    return "(empty name)" if name == "" else name


def _q(value, places: Decimal = CENT) -> Decimal:
    return Decimal(repr(float(value)) if isinstance(value, float) else value).quantize(places, ROUND_HALF_UP)


def _money(value: Decimal | None) -> str:
    if value is None:
        return "n/a"
    return ("-" if value < 0 else "") + f"\u20ac{abs(_q(value)):,}"


def _num(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{_q(value):,}"


def _ratios(cost: Decimal, ihc: Decimal, revenue: Decimal) -> tuple[Decimal | None, Decimal | None]:
    """CPO to the cent and ROAS to 4 decimals (as the CSV has them), of sums."""
    return (None if ihc == 0 else _q(cost / ihc), None if cost == 0 else _q(revenue / cost, FOUR))


def _download_csv(page, report) -> list[dict]:
    with page.expect_download() as download:
        report.locator("#download-csv").click()
    return list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))


def _sums(rows: list[dict]) -> dict[str, list]:
    """Per channel of the CSV rows (and ``None`` for all): spend, orders, revenue, dates with rows."""
    sums: dict = defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0), set()])
    for row in rows:
        for key in (row["channel_name"], None):
            cell = sums[key]
            cell[0] += Decimal(row["cost"])
            cell[1] += Decimal(row["ihc"])
            cell[2] += Decimal(row["ihc_revenue"])
            cell[3].add(row["date"])
    return {key: [*cell[:3], len(cell[3])] for key, cell in sums.items()}


def _totals_cells(cost: Decimal, ihc: Decimal, revenue: Decimal, days: int) -> list[str]:
    """A row of the totals table as the page should show these sums."""
    cpo, roas = _ratios(cost, ihc, revenue)
    return [_money(cost), _num(ihc), _money(revenue), _money(cpo), _num(roas), str(days)]


# --- what the page shows -------------------------------------------------------------------------


def _open_report(page, query: str = ""):
    page.goto(f"{BASE}{REPORT_PATH}{'?' + query if query else ''}")
    report = page.frame_locator(FRAME)
    expect(report.get_by_role("heading", name="Attribution report")).to_be_visible()
    return report


_TABLE_JS = """(t, part) => [...(part === 'foot' ? t.tFoot : t.tBodies[0]).rows].map(r => ({
    channel: r.dataset.channel, cells: [...r.cells].map(c => c.innerText.trim())}))"""


def _table(report, selector: str, part: str = "body") -> list[dict]:
    """The rows of a table: their ``data-channel`` and their cells' text."""
    return report.locator(selector).evaluate(_TABLE_JS, part)


def _totals(report) -> dict[str | None, list[str]]:
    """The totals table by channel (``None``: the selection's total), without the name column."""
    rows = {r["channel"]: r["cells"][1:] for r in _table(report, "#channel-totals")}
    rows[None] = _table(report, "#channel-totals", "foot")[0]["cells"][1:]
    return rows


def _cards(report) -> dict[str, str]:
    return dict(report.locator("#headline .card").evaluate_all(
        "cards => cards.map(c => [c.dataset.figure, c.querySelector('.v').innerText.trim()])"))


_BOXES_JS = """(svg, selector) => { const s = svg.getBoundingClientRect();
  return {svg: {x: s.x, y: s.y, w: s.width, h: s.height}, items: [...svg.querySelectorAll(selector)].map(e => {
    const r = e.getBoundingClientRect(), st = getComputedStyle(e);
    return {text: e.textContent, x: r.x, y: r.y, w: r.width, h: r.height,
            shown: st.visibility !== 'hidden' && st.display !== 'none' && parseFloat(st.opacity) > 0,
            bar: (() => { const g = e.closest('g.bar-row'); const b = g && g.querySelector('rect');
                          return b ? b.getBoundingClientRect().x : null; })()}; })}; }"""


def _rendered(report, chart_id: str, selector: str) -> tuple[dict, list[dict]]:
    """The chart's SVG box and its elements ``selector`` as the browser laid them out."""
    found = report.locator(f"#{chart_id} svg").evaluate(_BOXES_JS, selector)
    return found["svg"], found["items"]


def _inside(box: dict, svg: dict) -> bool:
    return (box["x"] >= svg["x"] - 0.5 and box["y"] >= svg["y"] - 0.5
            and box["x"] + box["w"] <= svg["x"] + svg["w"] + 0.5 and box["y"] + box["h"] <= svg["y"] + svg["h"] + 0.5)


def _every_channel_labelled(report, chart_id: str, channels: list[str]) -> None:
    """The chart has one rendered label per channel, in order: shown, readable, inside the chart,
    clear of the next one and of its own bars."""
    svg, labels = _rendered(report, chart_id, "text.label")
    assert [label["text"] for label in labels] == [_label(c) for c in channels], f"{chart_id}: labels"
    for label in labels:
        assert label["shown"] and label["w"] > 0 and label["h"] > 0, f"{chart_id}: {label['text']!r} not rendered"
        assert _inside(label, svg), f"{chart_id}: {label['text']!r} cut off"
        assert label["h"] >= 9, f"{chart_id}: {label['text']!r} too small to read ({label['h']:.1f} px)"
        assert label["bar"] is None or label["x"] + label["w"] <= label["bar"] + 0.5, f"{chart_id}: label over its bar"
    for upper, lower in itertools.pairwise(labels):
        assert upper["y"] + upper["h"] <= lower["y"] + 0.5, f"{chart_id}: {upper['text']!r} overlaps {lower['text']!r}"


def _axes_readable(report, chart_id: str, last_date: str) -> None:
    """A trend chart's date and value labels: shown, inside the chart, none over the next; the last date labelled."""
    svg, ticks = _rendered(report, chart_id, "text.tick")
    dates = [t for t in ticks if re.fullmatch(r"\d{2}-\d{2}|\d{4}-\d{2}-\d{2}", t["text"])]
    values = [t for t in ticks if t not in dates]
    assert len(dates) >= 2 and len(values) >= 2, f"{chart_id}: axis labels missing"
    assert dates[-1]["text"] in (last_date, last_date[5:]), f"{chart_id}: the last date is not labelled"
    for tick in ticks:
        assert tick["shown"] and tick["w"] > 0 and _inside(tick, svg), f"{chart_id}: tick {tick['text']!r} not shown"
    for left, right in itertools.pairwise(dates):
        assert left["x"] + left["w"] <= right["x"] + 0.5, f"{chart_id}: {left['text']} overlaps {right['text']}"
    for upper, lower in itertools.pairwise(sorted(values, key=lambda t: t["y"])):
        assert upper["y"] + upper["h"] <= lower["y"] + 0.5, f"{chart_id}: {upper['text']} overlaps {lower['text']}"


def _fits_the_window(report) -> None:
    """The report does not scroll sideways: what is wider than the window scrolls in a box of its own."""
    width, window = report.locator("html").evaluate("d => [d.scrollWidth, d.clientWidth]")
    assert width <= window, f"the page is {width} px wide in a window of {window} px"


def _series(report, chart_id: str) -> list[dict]:
    return report.locator(f"#{chart_id} g.series").evaluate_all(
        "gs => gs.map(g => ({kind: g.dataset.kind, name: g.dataset.series, values: g.dataset.values.split(' '), "
        "color: g.getAttribute('stroke')}))")


def _legend(report, chart_id: str) -> list[str]:
    return report.locator(f"#{chart_id} .legend li").all_inner_texts()


# --- the run and its report -----------------------------------------------------------------------


def test_the_runs_link_opens_the_report_of_its_range(page, run_id):
    # The "Attribution report" link of export_csv opens the report of the run's range inside the UI.
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/export_csv/details")
    extra = page.get_by_role("link", name="Attribution report", exact=True)
    expect(extra).to_be_visible()
    assert f"?start={START}&end={END}" in extra.get_attribute("href")
    expect(page.get_by_text("No Task Instance found")).to_have_count(0)  # the details have loaded
    page.wait_for_load_state("networkidle")
    _shot(page, "ui-run-report-link.png")
    extra.click()
    page.wait_for_url(lambda url: url.startswith(f"{BASE}{REPORT_PATH}?start={START}&end={END}"))
    report = page.frame_locator(FRAME)
    expect(report.get_by_role("heading", name="Attribution report")).to_be_visible()
    expect(report.locator('input[name="start"]')).to_have_value(START)
    expect(report.locator('input[name="end"]')).to_have_value(END)
    expect(report.get_by_role("heading", name=f"{START} to {END}, all channels")).to_be_visible()

    # Every channel of the range is labelled on both channel charts, in the totals table's order.
    channels = [r["channel"] for r in _table(report, "#channel-totals")]
    in_db = {c for c, *_ in _db_rows(START, END)}
    assert set(channels) == in_db and len(channels) == len(in_db) >= 16
    assert "" in channels  # the demo's session without a channel name: "(empty name)" everywhere
    _every_channel_labelled(report, "chart-channels", channels)
    _every_channel_labelled(report, "chart-roas-channels", channels)

    # Which run built these numbers: this one, with its look-back; its id opens its page in the UI.
    builds = report.locator("#builds")
    expect(builds.get_by_role("link", name=run_id).first).to_be_visible()
    expect(builds).to_contain_text("unlimited")
    _fits_the_window(report)
    _shot(page, "ui-report-of-run.png", at=report.locator("#figures-title"))
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


def _page_equals_csv(page, report, start: str, end: str, channels: tuple[str, ...] = ()) -> list[dict]:
    """The CSV download holds the database's rows of the selection; every total of the page is its sums."""
    got = _download_csv(page, report)
    expected = _db_rows(start, end, channels)
    assert len(got) == len(expected) > 0
    for row, (name, day, cost, ihc, revenue) in zip(got, expected, strict=True):
        assert (row["channel_name"], row["date"]) == (name, day)
        assert (Decimal(row["cost"]), Decimal(row["ihc"]), Decimal(row["ihc_revenue"])) == (
            _q(cost), _q(ihc, FOUR), _q(revenue))
        assert row["ROAS"] == ("" if cost == 0 else str(_q(revenue / cost, FOUR)))
        assert row["CPO"] == ("" if ihc == 0 else str(_q(cost / ihc)))

    # One number: the totals table, the headline figures and the bars are the CSV's sums, to the cent.
    sums, shown = _sums(got), _totals(report)
    assert set(shown) == set(sums)
    for channel, (cost, ihc, revenue, days) in sums.items():
        assert shown[channel] == _totals_cells(cost, ihc, revenue, days), f"totals of {channel!r}"
    cost, ihc, revenue, _ = sums[None]
    cpo, roas = _ratios(cost, ihc, revenue)
    assert _cards(report) == {"spend": _money(cost), "ihc_revenue": _money(revenue), "roas": _num(roas),
                              "ihc": _num(ihc), "cpo": _money(cpo)}
    bars = report.locator("#chart-channels g.bar-row").evaluate_all(
        "rows => rows.map(r => [r.dataset.channel, [...r.querySelectorAll('rect')].map(b => b.dataset.value)])")
    assert {c: v for c, v in bars} == {c: [str(s[0]), str(s[2])] for c, s in sums.items() if c is not None}
    return got


def test_the_pages_totals_are_the_csvs_to_the_cent(page, run_id):
    report = _open_report(page, urlencode({"start": START, "end": END}))
    _page_equals_csv(page, report, START, END)

    # Pick a range and two channels: the figures, charts and CSV follow.
    before = _cards(report)["spend"]
    report.locator('input[name="start"]').fill(PICK_START)
    report.locator('input[name="end"]').fill(PICK_END)
    for name in PICK_CHANNELS:
        report.locator("fieldset.channels").get_by_label(name, exact=True).check()
    report.get_by_role("button", name="Show").click()
    expect(report.get_by_role("heading", name=f"{PICK_START} to {PICK_END}, 2 of")).to_be_visible()
    page.wait_for_url(lambda url: url.startswith(f"{BASE}{REPORT_PATH}?start={PICK_START}&end={PICK_END}"))
    expect(report.locator("#chart-channels .bar-row")).to_have_count(len(PICK_CHANNELS))
    assert _cards(report)["spend"] != before
    rows = _page_equals_csv(page, report, PICK_START, PICK_END, PICK_CHANNELS)
    assert {r["channel_name"] for r in rows} == set(PICK_CHANNELS)
    _every_channel_labelled(report, "chart-channels", [r["channel"] for r in _table(report, "#channel-totals")])
    _fits_the_window(report)
    _shot(page, "ui-attribution-report.png")


def _daily(rows: list[dict], dates: list[str], channels: list[str], metric: str) -> list[str]:
    """A trend line's values as the chart carries them: the channels' sums per date, as the CSV rounds them."""
    values = []
    for date in dates:
        day = [r for r in rows if r["date"] == date and r["channel_name"] in channels]
        cost, ihc, revenue = (sum((Decimal(r[k]) for r in day), Decimal(0)) for k in ("cost", "ihc", "ihc_revenue"))
        if metric == "cost":
            values.append(str(_q(cost)))
        elif metric == "ihc_revenue":
            values.append(str(_q(revenue)))
        else:
            cpo, roas = _ratios(cost, ihc, revenue) if day else (None, None)
            value = roas if metric == "roas" else cpo
            values.append("n/a" if value is None else str(value))
    return values


def _trends_draw(report, rows: list[dict], drawn: list[str], rest: list[str]) -> None:
    """Each trend chart draws ``drawn``, "Other" (the sum of ``rest``) and, on the ratio charts, the
    whole selection, with the CSV's values, distinct colours, a legend and readable axes."""
    dates = sorted({r["date"] for r in rows})
    everything = drawn + rest
    for chart_id, metric in zip(TREND_CHARTS, ("cost", "ihc_revenue", "roas", "cpo"), strict=True):
        series = _series(report, chart_id)
        expected = [("channel", c) for c in drawn] + ([("other", "")] if rest else [])
        expected += [("total", "")] if chart_id in RATIO_CHARTS else []
        assert [(s["kind"], s["name"]) for s in series] == expected, chart_id
        for s in series:
            channels = [s["name"]] if s["kind"] == "channel" else rest if s["kind"] == "other" else everything
            assert s["values"] == _daily(rows, dates, channels, metric), f"{chart_id}: {s['kind']} {s['name']!r}"
        assert len({s["color"] for s in series}) == len(series), f"{chart_id}: two lines share a colour"
        legend = _legend(report, chart_id)
        assert legend[: len(drawn)] == [_label(c) for c in drawn]
        if rest:
            assert legend[len(drawn)] == f"Other ({len(rest)} channels)"
        _axes_readable(report, chart_id, dates[-1])
        clipped = report.locator(f"#{chart_id} path.clipped")
        if clipped.count():  # an outlier on the top edge is marked and named under the chart
            expect(report.locator(f"#{chart_id} .clip-note")).to_contain_text(f"{clipped.count()} point")


def test_trend_charts_draw_the_top_channels_or_the_lines_picked(page, run_id):
    report = _open_report(page, urlencode({"start": START, "end": END}))
    rows = _download_csv(page, report)
    ranked = [r["channel"] for r in _table(report, "#channel-totals")]
    assert len(ranked) > TOP + 1 and not set(LINES) & set(ranked[:TOP])
    # By default: the 6 channels with the most attributed revenue, and Other.
    expect(report.locator("#trends ~ p.sub").first).to_contain_text(
        f"Lines: the {TOP} channels with the most attributed revenue, and Other ({len(ranked) - TOP} channels)")
    _trends_draw(report, rows, ranked[:TOP], ranked[TOP:])
    _fits_the_window(report)
    _shot(page, "ui-attribution-trends.png", at=report.locator("#trends"), height=1400)

    # The line picker: tick three channels, Draw; the charts draw those and Other, for the same selection.
    lines = report.locator("#lines")
    for name in LINES:
        lines.get_by_label(name, exact=True).check()
    lines.get_by_role("button", name="Draw").click()
    page.wait_for_url(lambda url: "line=" in url)
    expect(report.locator("#trends ~ p.sub").first).to_contain_text(
        f"Lines: the {len(LINES)} channels picked, and Other ({len(ranked) - len(LINES)} channels)")
    for name in LINES:
        expect(lines.get_by_label(name, exact=True)).to_be_checked()
    drawn = [c for c in ranked if c in LINES]
    _trends_draw(report, rows, drawn, [c for c in ranked if c not in LINES])
    expect(report.get_by_role("heading", name=f"{START} to {END}, all channels")).to_be_visible()
    _fits_the_window(report)
    _shot(page, "ui-attribution-lines.png", at=report.locator("#chart-roas"))

    # "Top 6" goes back to the default lines.
    lines.get_by_role("link", name=f"Top {TOP}").click()
    page.wait_for_url(lambda url: "line=" not in url)
    expect(report.locator(f"#{TREND_CHARTS[0]} g.series[data-kind=channel]")).to_have_count(TOP)

    # Over two years the date labels carry the year; the last one still ends inside its chart.
    first = _query("SELECT MIN(date) FROM channel_reporting")[0][0]
    assert first[:4] != END[:4]
    report = _open_report(page, urlencode({"start": first, "end": END}))
    for chart_id in TREND_CHARTS:
        _axes_readable(report, chart_id, END)


# --- IHC beside the rules, paths, the previous period ----------------------------------------------


def _credit_rows(where: str, params: tuple) -> list[tuple]:
    return _query(
        "SELECT conv_id, conv_ts, session_ts, session_id, date, channel_name, revenue_micros, ihc_e4 "
        f"FROM attribution_credit WHERE {where}", params)


def _journeys(rows: list[tuple]) -> dict[str, list[tuple]]:
    """The credited sessions of each conversion, in session order (timestamp, then session id)."""
    by_conversion = defaultdict(list)
    for row in rows:
        by_conversion[row[0]].append(row)
    return {conv: sorted(sessions, key=lambda s: (s[2], s[3])) for conv, sessions in by_conversion.items()}


def _half_up_div(value: int, divisor: int) -> int:
    return (value + divisor // 2) // divisor if value >= 0 else -((divisor // 2 - value) // divisor)


def test_ihc_beside_the_rule_based_models(page, run_id):
    report = _open_report(page, urlencode({"start": START, "end": END}))
    heads = report.locator("#model-comparison thead tr").nth(1).locator("th").all_inner_texts()
    models = heads[: len(heads) // 2]
    assert models == ["IHC", "Last touch", "First touch", "Linear", "Position-based (40/20/40)"]
    table = {}
    for cells in report.locator("#model-comparison tbody tr").evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))"):
        n = len(models)
        table[cells[0]] = (dict(zip(models, cells[1:1 + n])), dict(zip(models, cells[1 + n:1 + 2 * n])), cells[-1])

    # The channels credited on these dates; the IHC revenue is the totals table's.
    sessions = _credit_rows("date >= ? AND date <= ?", (START, END))
    assert set(table) == {_label(r[5]) for r in sessions}
    # One number: IHC's orders are the CSV's sums (4 decimals), its revenue the totals table's.
    totals = {_label(c): cells for c, cells in _totals(report).items() if c is not None}
    csv_sums = {_label(c): cells for c, cells in _sums(_download_csv(page, report)).items() if c is not None}
    for channel, (orders, revenue, _) in table.items():
        assert orders["IHC"] == str(csv_sums[channel][1]), f"IHC orders of {channel!r}"
        assert _num(Decimal(orders["IHC"])) == totals[channel][1], f"IHC orders of {channel!r}"
        assert revenue["IHC"] == totals[channel][2], f"IHC revenue of {channel!r}"

    # First and last touch, recomputed from the credited journeys: the whole conversion to the first
    # (last) session; money summed per channel and date, to the cent.
    journeys = _journeys(_credit_rows("conv_id IN (SELECT conv_id FROM attribution_credit WHERE date >= ? "
                                      "AND date <= ?)", (START, END)))
    for model, pick in (("First touch", 0), ("Last touch", -1)):
        orders, micros = defaultdict(int), defaultdict(int)
        for journey in journeys.values():
            session = journey[pick]
            if START <= session[4] <= END:
                orders[session[5]] += 1
                micros[(session[5], session[4])] += session[6]
        cents = defaultdict(int)
        for (channel, _), value in micros.items():
            cents[channel] += _half_up_div(value, 10_000)
        for channel, (shown_orders, shown_revenue, _) in table.items():
            name = "" if channel == "(empty name)" else channel
            assert shown_orders[model] == f"{orders[name]:.4f}", f"{model} orders of {channel!r}"
            assert shown_revenue[model] == _money(Decimal(cents[name]) / 100), f"{model} revenue of {channel!r}"

    # The shift: IHC's revenue against last touch's, in percent of last touch's.
    for channel, (_, revenue, shift) in table.items():
        ihc, last = (Decimal(revenue[m].lstrip("-").replace("\u20ac", "").replace(",", "")) for m in ("IHC", "Last touch"))
        expected = "n/a" if last == 0 else f"{_q((ihc - last) / last * 100, Decimal('0.1')):+} %"
        assert shift == expected, f"shift of {channel!r}"
    expect(report.get_by_role("heading", name="IHC beside the rules you know")).to_be_visible()
    _fits_the_window(report)
    _shot(page, "ui-attribution-models.png", at=report.locator("#models"))


LENGTHS = ((1, "1"), (2, "2"), (3, "3"), (4, "4-5"), (6, "6-10"), (11, "11-20"), (21, "21 or more"))
TIMES = ((0, "under 1 hour"), (3600, "1 to 24 hours"), (86400, "1 to 7 days"), (7 * 86400, "7 to 30 days"),
         (30 * 86400, "30 days or more"))


def _bucket(buckets, value) -> str:
    return [label for low, label in buckets if value >= low][-1] if value >= buckets[0][0] else buckets[0][1]


def _counted(groups: dict) -> list[tuple]:
    return [(label, len(micros), sum(micros)) for label, micros in groups.items()]


def test_paths_to_conversion(page, run_id):
    report = _open_report(page, urlencode({"start": START, "end": END}))
    journeys = _journeys(_credit_rows("conv_date >= ? AND conv_date <= ?", (START, END)))
    paths, lengths, times = defaultdict(list), {label: [] for _, label in LENGTHS}, {label: [] for _, label in TIMES}
    for sessions in journeys.values():
        micros = sessions[0][6]
        path = tuple(name for name, _ in itertools.groupby(s[5] for s in sessions))
        paths[path].append(micros)
        lengths[_bucket(LENGTHS, len(sessions))].append(micros)
        took = (dt.datetime.fromisoformat(sessions[0][1]) - dt.datetime.fromisoformat(sessions[0][2])).total_seconds()
        times[_bucket(TIMES, took)].append(micros)
    n = len(journeys)
    expect(report.locator("#paths-scope")).to_contain_text(
        f"{n} attributed conversion(s) with a conversion date from {START} to {END}")
    expect(report.locator("#paths-scope")).to_contain_text(
        f"revenue {_money(Decimal(sum(s[0][6] for s in journeys.values())) / 1_000_000)}")

    def share(count: int) -> str:
        return f"{_q(Decimal(count) * 100 / n, Decimal('0.1'))} %"

    def money(micros: int) -> str:
        return _money(Decimal(micros) / 1_000_000)

    ranked = sorted(paths.items(), key=lambda p: (-len(p[1]), -sum(p[1]), p[0]))[:20]
    assert [r["cells"] for r in _table(report, "#paths")] == [
        [str(i), " > ".join(map(_label, path)), str(len(m)), share(len(m)), money(sum(m))]
        for i, (path, m) in enumerate(ranked, start=1)]
    for table_id, groups in (("#journey-lengths", lengths), ("#time-to-conversion", times)):
        shown = [r["cells"][:4] for r in _table(report, table_id)]
        assert shown == [[label, str(count), share(count), money(total)] for label, count, total in _counted(groups)]
        assert sum(int(cells[1]) for cells in shown) == n
    _fits_the_window(report)
    _shot(page, "ui-attribution-paths.png", at=report.locator("#paths-title"), height=1300)

    # With a channel picked: the conversions with a session of it, their whole paths.
    report = _open_report(page, urlencode({"start": START, "end": END, "channel": "Referral"}))
    with_referral = [s for s in journeys.values() if any(x[5] == "Referral" for x in s)]
    expect(report.locator("#paths-scope")).to_contain_text(f"{len(with_referral)} attributed conversion(s)")
    assert all("Referral" in cells[1] for cells in (r["cells"] for r in _table(report, "#paths")))


def test_the_previous_period(page, run_id):
    earlier = _totals(_open_report(page, urlencode({"start": PREVIOUS[0], "end": PREVIOUS[1]})))
    report = _open_report(page, urlencode({"start": HALF[0], "end": HALF[1]}))
    expect(report.locator("#comparison-periods")).to_contain_text(
        f"{HALF[0]} to {HALF[1]} against {PREVIOUS[0]} to {PREVIOUS[1]}, the 7 day(s) before it")
    now = _totals(report)
    nothing = ["\u20ac0.00", "0.00", "\u20ac0.00", "n/a", "n/a", "0"]
    rows = _table(report, "#period-comparison") + [
        dict(r, channel=None) for r in _table(report, "#period-comparison", "foot")]
    assert {r["channel"] for r in rows} == set(now) | set(earlier)
    for row in rows:
        this, before = now.get(row["channel"], nothing), earlier.get(row["channel"], nothing)
        cells = row["cells"][1:]
        # spend, attributed revenue, ROAS, CPO: this period, the previous one, the change
        for k, column in enumerate((0, 2, 4, 3)):
            assert cells[3 * k: 3 * k + 2] == [this[column], before[column]], f"{row['channel']!r}, column {column}"
        for k, column in enumerate((0, 2)):  # money: the change is the difference of the cents shown
            a, b = (Decimal(v.replace("\u20ac", "").replace(",", "")) for v in (this[column], before[column]))
            change = ("+" if a > b else "") + _money(a - b)
            if b:
                change += f" ({_q((a - b) * 100 / abs(b), Decimal('0.1')):+} %)"
            assert cells[3 * k + 2] == change, f"change of {row['channel']!r}, column {column}"
        for k in (2, 3):
            if "n/a" in cells[3 * k: 3 * k + 2]:
                assert cells[3 * k + 2] == "n/a"
    _fits_the_window(report)
    _shot(page, "ui-attribution-comparison.png", at=report.locator("#comparison"))

    # Before the first report rows there is nothing to compare with, and the page says so.
    first = _query("SELECT MIN(date) FROM channel_reporting")[0][0]
    report = _open_report(page, urlencode({"start": first, "end": first}))
    expect(report.locator("#comparison-none")).to_contain_text("there is nothing to compare with")


def test_a_date_that_is_not_one_is_named_and_the_range_shown_is_said(page, run_id):
    report = _open_report(page, urlencode({"start": "2024-02-30", "end": END}))
    first = _query("SELECT MIN(date) FROM channel_reporting")[0][0]
    shown = max(dt.date.fromisoformat(first), dt.date.fromisoformat(END) - dt.timedelta(days=29)).isoformat()
    expect(report.locator("p.warn")).to_have_text(
        f"start date '2024-02-30' is not a date (YYYY-MM-DD); showing {shown} to {END}, up to 30 days to the end date")
    expect(report.locator('input[name="start"]')).to_have_value(shown)
    expect(report.get_by_role("heading", name=f"{shown} to {END}, all channels")).to_be_visible()


# --- issues, clearing a task, the exported files ----------------------------------------------------


def test_the_issues_tab(page, run_id):
    report = _open_report(page)
    report.get_by_role("link", name="Issues").click()
    issues = report.locator("#issues")
    expect(issues).to_be_visible()
    by_reason = dict(_query("SELECT reason, COUNT(*) FROM attribution_issues GROUP BY reason"))
    assert {"no_sessions", "invalid_input"} <= set(by_reason)
    for reason, count in by_reason.items():
        expect(report.locator("#issue-reasons")).to_contain_text(f"{reason}: {count}")
    expect(issues.get_by_role("link", name=run_id).first).to_be_visible()
    _fits_the_window(report)
    _shot(page, "ui-attribution-issues.png")
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


def test_the_exported_files_tab_and_the_chart_of_a_range(page, run_id):
    name = f"channel_reporting_{START}_{END}"
    page_totals = _totals(_open_report(page, urlencode({"start": START, "end": END})))
    page.goto(f"{BASE}{REPORT_PATH}exports")
    report = page.frame_locator(FRAME)
    row = report.get_by_role("row", name=f"{START} \u2192 {END}").first
    expect(row.get_by_role("link", name=f"{name}.csv")).to_be_visible()
    lines = (ROOT / "output" / f"{name}.csv").read_text(encoding="utf-8").splitlines()
    expect(row.locator("td").nth(2)).to_have_text(str(len(lines) - 1))
    _fits_the_window(report)
    _shot(page, "ui-exports.png")

    # The chart opens inside the UI, with its CSV link; its totals are the report page's.
    row.get_by_role("link", name="open chart").click()
    expect(report.locator("#chart-channels figcaption")).to_have_text("Spend and attributed revenue per channel")
    expect(report.get_by_role("link", name=f"Download the CSV ({name}.csv)")).to_be_visible()
    assert _totals(report) == page_totals
    _every_channel_labelled(report, "chart-channels", [r["channel"] for r in _table(report, "#channel-totals")])


def test_the_chart_file_renders_on_its_own(page, run_id, tmp_path):
    """The chart file of the range, opened from disk (no Airflow around it), as a browser shows it."""
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
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1300})
    try:
        page.goto(chart.as_uri())
        expect(page.locator("#chart-roas-channels figcaption")).to_contain_text("ROAS per channel")
        assert page.locator("#channel-totals tbody tr").count() == len(channel_totals(rows))
        channels = [t.channel_name for t in channel_totals(rows)]
        _every_channel_labelled(page, "chart-channels", channels)
        _every_channel_labelled(page, "chart-roas-channels", channels)
        for chart_id in TREND_CHARTS:
            _axes_readable(page, chart_id, END)
        _shot(page, "report-chart.png")
    finally:
        page.set_viewport_size(VIEWPORT)
