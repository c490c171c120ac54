"""What the browser test reads: the local Airflow's API, the report's pages as the browser lays
them out, the database and the CSV downloads; and the checks every view shares."""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import json
import os
import re
import sqlite3
import sys
from collections import Counter, defaultdict
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[3]
BASE = os.environ.get("E2E_BASE_URL", "http://localhost:8080")
DAG_ID = "ihc_attribution"
START, END = "2024-01-01", "2024-01-14"  # the demo's conversions, its bad rows included
REPORT_PATH = "/plugin/attribution-report/attribution-report/"  # the report app's pages inside the UI
FRAME = 'iframe[title="Reports"]'
SHOTS = Path(os.environ.get("E2E_SCREENSHOT_DIR", ROOT / "docs" / "img"))
RUN_TIMEOUT_S = float(os.environ.get("E2E_RUN_TIMEOUT", "600"))
VIEWPORT = {"width": 1280, "height": 900}
TREND_CHARTS = ("chart-daily-cost", "chart-daily-revenue", "chart-roas", "chart-cpo")
RATIO_CHARTS = ("chart-roas", "chart-cpo")
CENT, FOUR = Decimal("0.01"), Decimal("0.0001")
#: Passed checks: ``assert`` statements (pytest's assertion pass hook) and expectations on pages.
CHECKS: Counter[str] = Counter()


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


def airflow_up():
    if "airflow_up" not in sys.modules:
        spec = importlib.util.spec_from_file_location("airflow_up", ROOT / "scripts" / "airflow_up.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["airflow_up"] = module
        spec.loader.exec_module(module)
    return sys.modules["airflow_up"]


def token(page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "_token")


def api(page, path: str) -> dict:
    response = page.request.get(f"{BASE}/api/v2/dags/{DAG_ID}/{path}",
                                headers={"Authorization": f"Bearer {token(page)}"}, timeout=15_000)
    assert response.ok, f"GET {path}: HTTP {response.status}"
    return response.json()


def run_state(page, run_id: str) -> dict:
    return api(page, f"dagRuns/{quote(run_id, safe='')}")


def task_instance(page, run_id: str, task_id: str) -> dict:
    return api(page, f"dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}")


def shot(page, name: str, at=None, height: int | None = None) -> Path:
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


def db_path() -> str:
    return json.loads(airflow_up().load_state()["attribution_db_conn"])["host"]


def query(sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(f"file:{db_path()}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def db_rows(start: str, end: str, channels: tuple[str, ...] = ()) -> list[tuple]:
    where = f" AND channel_name IN ({', '.join('?' for _ in channels)})" if channels else ""
    return query(
        "SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting "
        f"WHERE date >= ? AND date <= ?{where} ORDER BY date, channel_name", (start, end, *channels))


def label(name: str) -> str:
    return "(empty name)" if name == "" else name


def q(value, places: Decimal = CENT) -> Decimal:
    return Decimal(repr(float(value)) if isinstance(value, float) else value).quantize(places, ROUND_HALF_UP)


def money(value: Decimal | None) -> str:
    if value is None:
        return "n/a"
    return ("-" if value < 0 else "") + f"\u20ac{abs(q(value)):,}"


def num(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{q(value):,}"


def ratios(cost: Decimal, ihc: Decimal, revenue: Decimal) -> tuple[Decimal | None, Decimal | None]:
    """CPO to the cent and ROAS to 4 decimals (as the CSV has them), of sums."""
    return (None if ihc == 0 else q(cost / ihc), None if cost == 0 else q(revenue / cost, FOUR))


def download_csv(page, report) -> list[dict]:
    with page.expect_download() as download:
        report.locator("#download-csv").click()
    return list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))


def sums(rows: list[dict]) -> dict[str, list]:
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


def totals_cells(cost: Decimal, ihc: Decimal, revenue: Decimal, days: int) -> list[str]:
    """A row of the totals table as the page should show these sums."""
    cpo, roas = ratios(cost, ihc, revenue)
    return [money(cost), num(ihc), money(revenue), money(cpo), num(roas), str(days)]


# --- what the page shows -------------------------------------------------------------------------


def open_report(page, selection: str = ""):
    """The report page of ``selection`` (a query string) inside the UI, once it shows."""
    page.goto(f"{BASE}{REPORT_PATH}{'?' + selection if selection else ''}")
    report = page.frame_locator(FRAME)
    expect(report.get_by_role("heading", name="Attribution report")).to_be_visible()
    return report


_TABLE_JS = """(t, part) => [...(part === 'foot' ? t.tFoot : t.tBodies[0]).rows].map(r => ({
    channel: r.dataset.channel, cells: [...r.cells].map(c => c.innerText.trim())}))"""


def table(report, selector: str, part: str = "body") -> list[dict]:
    """The rows of a table: their ``data-channel`` and their cells' text."""
    return report.locator(selector).evaluate(_TABLE_JS, part)


def totals(report) -> dict[str | None, list[str]]:
    """The totals table by channel (``None``: the selection's total), without the name column."""
    rows = {r["channel"]: r["cells"][1:] for r in table(report, "#channel-totals")}
    rows[None] = table(report, "#channel-totals", "foot")[0]["cells"][1:]
    return rows


def cards(report) -> dict[str, str]:
    return dict(report.locator("#headline .card").evaluate_all(
        "cards => cards.map(c => [c.dataset.figure, c.querySelector('.v').innerText.trim()])"))


_BOXES_JS = """(svg, selector) => { const s = svg.getBoundingClientRect();
  return {svg: {x: s.x, y: s.y, w: s.width, h: s.height}, items: [...svg.querySelectorAll(selector)].map(e => {
    const r = e.getBoundingClientRect(), st = getComputedStyle(e);
    return {text: e.textContent, x: r.x, y: r.y, w: r.width, h: r.height,
            shown: st.visibility !== 'hidden' && st.display !== 'none' && parseFloat(st.opacity) > 0,
            bar: (() => { const g = e.closest('g.bar-row'); const b = g && g.querySelector('rect');
                          return b ? b.getBoundingClientRect().x : null; })()}; })}; }"""


def rendered(report, chart_id: str, selector: str) -> tuple[dict, list[dict]]:
    """The chart's SVG box and its elements ``selector`` as the browser laid them out."""
    found = report.locator(f"#{chart_id} svg").evaluate(_BOXES_JS, selector)
    return found["svg"], found["items"]


def inside(box: dict, svg: dict) -> bool:
    return (box["x"] >= svg["x"] - 0.5 and box["y"] >= svg["y"] - 0.5
            and box["x"] + box["w"] <= svg["x"] + svg["w"] + 0.5 and box["y"] + box["h"] <= svg["y"] + svg["h"] + 0.5)


def every_channel_labelled(report, chart_id: str, channels: list[str]) -> None:
    """The chart has one rendered label per channel, in order: shown, readable, inside the chart,
    clear of the next one and of its own bars."""
    svg, labels = rendered(report, chart_id, "text.label")
    assert [t["text"] for t in labels] == [label(c) for c in channels], f"{chart_id}: labels"
    for t in labels:
        assert t["shown"] and t["w"] > 0 and t["h"] > 0, f"{chart_id}: {t['text']!r} not rendered"
        assert inside(t, svg), f"{chart_id}: {t['text']!r} cut off"
        assert t["h"] >= 9, f"{chart_id}: {t['text']!r} too small to read ({t['h']:.1f} px)"
        assert t["bar"] is None or t["x"] + t["w"] <= t["bar"] + 0.5, f"{chart_id}: {t['text']!r} over its bar"
    for upper, lower in itertools.pairwise(labels):
        assert upper["y"] + upper["h"] <= lower["y"] + 0.5, f"{chart_id}: {upper['text']!r} overlaps {lower['text']!r}"


def axes_readable(report, chart_id: str, last_date: str) -> None:
    """A trend chart's date and value labels: shown, inside the chart, none over the next; the last date labelled."""
    svg, ticks = rendered(report, chart_id, "text.tick")
    dates = [t for t in ticks if re.fullmatch(r"\d{2}-\d{2}|\d{4}-\d{2}-\d{2}", t["text"])]
    values = [t for t in ticks if t not in dates]
    assert len(dates) >= 2 and len(values) >= 2, f"{chart_id}: axis labels missing"
    assert dates[-1]["text"] in (last_date, last_date[5:]), f"{chart_id}: the last date is not labelled"
    for tick in ticks:
        assert tick["shown"] and tick["w"] > 0 and inside(tick, svg), f"{chart_id}: tick {tick['text']!r} not shown"
    for left, right in itertools.pairwise(dates):
        assert left["x"] + left["w"] <= right["x"] + 0.5, f"{chart_id}: {left['text']} overlaps {right['text']}"
    for upper, lower in itertools.pairwise(sorted(values, key=lambda t: t["y"])):
        assert upper["y"] + upper["h"] <= lower["y"] + 0.5, f"{chart_id}: {upper['text']} overlaps {lower['text']}"


def fits_the_window(report) -> None:
    """The report does not scroll sideways: what is wider than the window scrolls in a box of its own."""
    width, window = report.locator("html").evaluate("d => [d.scrollWidth, d.clientWidth]")
    assert width <= window, f"the page is {width} px wide in a window of {window} px"


def series(report, chart_id: str) -> list[dict]:
    return report.locator(f"#{chart_id} g.series").evaluate_all(
        "gs => gs.map(g => ({kind: g.dataset.kind, name: g.dataset.series, values: g.dataset.values.split(' '), "
        "color: g.getAttribute('stroke')}))")


def legend(report, chart_id: str) -> list[str]:
    return report.locator(f"#{chart_id} .legend li").all_inner_texts()
