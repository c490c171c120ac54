"""Browser test of the report's views, on the run over the demo range (``conftest.py``).

- the page's totals against the CSV download of the same selection, to the cent (and the CSV
  against the database), for the whole range and for a range and two channels picked;
- the trend charts: the top channels and "Other", every value against the CSV, readable axes,
  and the lines picked instead;
- IHC beside the rule-based models and the shift against last touch, recomputed from
  ``attribution_credit``;
- the paths to conversion, journey lengths and times to conversion, recomputed from
  ``attribution_credit``;
- the comparison with the previous period against the totals of both periods' pages;
- a date that is not one.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections import defaultdict
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from tests.ui.e2e import pages as ui
from tests.ui.e2e.pages import (
    BASE, END, FOUR, RATIO_CHARTS, REPORT_PATH, START, TREND_CHARTS, expect,
)

pytestmark = pytest.mark.skipif(os.environ.get("RUN_E2E") != "1", reason="browser test: run it with make e2e")

PICK_START, PICK_END = "2024-01-02", "2024-01-08"
PICK_CHANNELS = ("Paid Search Brand", "Performance Max")
LINES = ("Microsoft Ads", "TikTok Ads", "YouTube Ads")  # none of the top 6 of the demo range
TOP = 6
HALF, PREVIOUS = ("2024-01-08", "2024-01-14"), ("2024-01-01", "2024-01-07")


def _page_equals_csv(page, report, start: str, end: str, channels: tuple[str, ...] = ()) -> list[dict]:
    """The CSV download holds the database's rows of the selection; every total of the page is its sums."""
    got = ui.download_csv(page, report)
    expected = ui.db_rows(start, end, channels)
    assert len(got) == len(expected) > 0
    for row, (name, day, cost, ihc, revenue) in zip(got, expected, strict=True):
        assert (row["channel_name"], row["date"]) == (name, day)
        assert (Decimal(row["cost"]), Decimal(row["ihc"]), Decimal(row["ihc_revenue"])) == (
            ui.q(cost), ui.q(ihc, FOUR), ui.q(revenue))
        assert row["ROAS"] == ("" if cost == 0 else str(ui.q(revenue / cost, FOUR)))
        assert row["CPO"] == ("" if ihc == 0 else str(ui.q(cost / ihc)))

    # One number: the totals table, the headline figures and the bars are the CSV's sums, to the cent.
    sums, shown = ui.sums(got), ui.totals(report)
    assert set(shown) == set(sums)
    for channel, (cost, ihc, revenue, days) in sums.items():
        assert shown[channel] == ui.totals_cells(cost, ihc, revenue, days), f"totals of {channel!r}"
    cost, ihc, revenue, _ = sums[None]
    cpo, roas = ui.ratios(cost, ihc, revenue)
    assert ui.cards(report) == {"spend": ui.money(cost), "ihc_revenue": ui.money(revenue), "roas": ui.num(roas),
                              "ihc": ui.num(ihc), "cpo": ui.money(cpo)}
    bars = report.locator("#chart-channels g.bar-row").evaluate_all(
        "rows => rows.map(r => [r.dataset.channel, [...r.querySelectorAll('rect')].map(b => b.dataset.value)])")
    assert {c: v for c, v in bars} == {c: [str(s[0]), str(s[2])] for c, s in sums.items() if c is not None}
    return got


def test_the_pages_totals_are_the_csvs_to_the_cent(page, run_id):
    report = ui.open_report(page, urlencode({"start": START, "end": END}))
    _page_equals_csv(page, report, START, END)

    # Pick a range and two channels: the figures, charts and CSV follow.
    before = ui.cards(report)["spend"]
    report.locator('input[name="start"]').fill(PICK_START)
    report.locator('input[name="end"]').fill(PICK_END)
    for name in PICK_CHANNELS:
        report.locator("fieldset.channels").get_by_label(name, exact=True).check()
    report.get_by_role("button", name="Show").click()
    expect(report.get_by_role("heading", name=f"{PICK_START} to {PICK_END}, 2 of")).to_be_visible()
    page.wait_for_url(lambda url: url.startswith(f"{BASE}{REPORT_PATH}?start={PICK_START}&end={PICK_END}"))
    expect(report.locator("#chart-channels .bar-row")).to_have_count(len(PICK_CHANNELS))
    assert ui.cards(report)["spend"] != before
    rows = _page_equals_csv(page, report, PICK_START, PICK_END, PICK_CHANNELS)
    assert {r["channel_name"] for r in rows} == set(PICK_CHANNELS)
    ui.every_channel_labelled(report, "chart-channels", [r["channel"] for r in ui.table(report, "#channel-totals")])
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-report.png")


def _daily(rows: list[dict], dates: list[str], channels: list[str], metric: str) -> list[str]:
    """A trend line's values as the chart carries them: the channels' sums per date, as the CSV rounds them."""
    values = []
    for date in dates:
        day = [r for r in rows if r["date"] == date and r["channel_name"] in channels]
        cost, ihc, revenue = (sum((Decimal(r[k]) for r in day), Decimal(0)) for k in ("cost", "ihc", "ihc_revenue"))
        if metric == "cost":
            values.append(str(ui.q(cost)))
        elif metric == "ihc_revenue":
            values.append(str(ui.q(revenue)))
        else:
            cpo, roas = ui.ratios(cost, ihc, revenue) if day else (None, None)
            value = roas if metric == "roas" else cpo
            values.append("n/a" if value is None else str(value))
    return values


def _trends_draw(report, rows: list[dict], drawn: list[str], rest: list[str]) -> None:
    """Each trend chart draws ``drawn``, "Other" (the sum of ``rest``) and, on the ratio charts, the
    whole selection, with the CSV's values, distinct colours, a legend and readable axes."""
    dates = sorted({r["date"] for r in rows})
    everything = drawn + rest
    for chart_id, metric in zip(TREND_CHARTS, ("cost", "ihc_revenue", "roas", "cpo"), strict=True):
        series = ui.series(report, chart_id)
        expected = [("channel", c) for c in drawn] + ([("other", "")] if rest else [])
        expected += [("total", "")] if chart_id in RATIO_CHARTS else []
        assert [(s["kind"], s["name"]) for s in series] == expected, chart_id
        for s in series:
            channels = [s["name"]] if s["kind"] == "channel" else rest if s["kind"] == "other" else everything
            assert s["values"] == _daily(rows, dates, channels, metric), f"{chart_id}: {s['kind']} {s['name']!r}"
        assert len({s["color"] for s in series}) == len(series), f"{chart_id}: two lines share a colour"
        legend = ui.legend(report, chart_id)
        assert legend[: len(drawn)] == [ui.label(c) for c in drawn]
        if rest:
            assert legend[len(drawn)] == f"Other ({len(rest)} channels)"
        ui.axes_readable(report, chart_id, dates[-1])
        clipped = report.locator(f"#{chart_id} path.clipped")
        if clipped.count():  # an outlier on the top edge is marked and named under the chart
            expect(report.locator(f"#{chart_id} .clip-note")).to_contain_text(f"{clipped.count()} point")


def test_trend_charts_draw_the_top_channels_or_the_lines_picked(page, run_id):
    report = ui.open_report(page, urlencode({"start": START, "end": END}))
    rows = ui.download_csv(page, report)
    ranked = [r["channel"] for r in ui.table(report, "#channel-totals")]
    assert len(ranked) > TOP + 1 and not set(LINES) & set(ranked[:TOP])
    # By default: the 6 channels with the most attributed revenue, and Other.
    expect(report.locator("#trends ~ p.sub").first).to_contain_text(
        f"Lines: the {TOP} channels with the most attributed revenue, and Other ({len(ranked) - TOP} channels)")
    _trends_draw(report, rows, ranked[:TOP], ranked[TOP:])
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-trends.png", at=report.locator("#trends"), height=1400)

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
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-lines.png", at=report.locator("#chart-roas"))

    # "Top 6" goes back to the default lines.
    lines.get_by_role("link", name=f"Top {TOP}").click()
    page.wait_for_url(lambda url: "line=" not in url)
    expect(report.locator(f"#{TREND_CHARTS[0]} g.series[data-kind=channel]")).to_have_count(TOP)

    # Over two years the date labels carry the year; the last one still ends inside its chart.
    first = ui.query("SELECT MIN(date) FROM channel_reporting")[0][0]
    assert first[:4] != END[:4]
    report = ui.open_report(page, urlencode({"start": first, "end": END}))
    for chart_id in TREND_CHARTS:
        ui.axes_readable(report, chart_id, END)


# --- IHC beside the rules, paths, the previous period ----------------------------------------------


def _credit_rows(where: str, params: tuple) -> list[tuple]:
    return ui.query(
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
    report = ui.open_report(page, urlencode({"start": START, "end": END}))
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
    assert set(table) == {ui.label(r[5]) for r in sessions}
    # One number: IHC's orders are the CSV's sums (4 decimals), its revenue the totals table's.
    totals = {ui.label(c): cells for c, cells in ui.totals(report).items() if c is not None}
    csv_sums = {ui.label(c): cells for c, cells in ui.sums(ui.download_csv(page, report)).items() if c is not None}
    for channel, (orders, revenue, _) in table.items():
        assert orders["IHC"] == str(csv_sums[channel][1]), f"IHC orders of {channel!r}"
        assert ui.num(Decimal(orders["IHC"])) == totals[channel][1], f"IHC orders of {channel!r}"
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
            assert shown_revenue[model] == ui.money(Decimal(cents[name]) / 100), f"{model} revenue of {channel!r}"

    # The shift: IHC's revenue against last touch's, in percent of last touch's.
    for channel, (_, revenue, shift) in table.items():
        ihc, last = (Decimal(revenue[m].lstrip("-").replace("\u20ac", "").replace(",", "")) for m in ("IHC", "Last touch"))
        expected = "n/a" if last == 0 else f"{ui.q((ihc - last) / last * 100, Decimal('0.1')):+} %"
        assert shift == expected, f"shift of {channel!r}"
    expect(report.get_by_role("heading", name="IHC beside the rules you know")).to_be_visible()
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-models.png", at=report.locator("#models"))


LENGTHS = ((1, "1"), (2, "2"), (3, "3"), (4, "4-5"), (6, "6-10"), (11, "11-20"), (21, "21 or more"))
TIMES = ((0, "under 1 hour"), (3600, "1 to 24 hours"), (86400, "1 to 7 days"), (7 * 86400, "7 to 30 days"),
         (30 * 86400, "30 days or more"))


def _bucket(buckets, value) -> str:
    return [label for low, label in buckets if value >= low][-1] if value >= buckets[0][0] else buckets[0][1]


def _counted(groups: dict) -> list[tuple]:
    return [(label, len(micros), sum(micros)) for label, micros in groups.items()]


def test_paths_to_conversion(page, run_id):
    report = ui.open_report(page, urlencode({"start": START, "end": END}))
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
        f"revenue {ui.money(Decimal(sum(s[0][6] for s in journeys.values())) / 1_000_000)}")

    def share(count: int) -> str:
        return f"{ui.q(Decimal(count) * 100 / n, Decimal('0.1'))} %"

    def money(micros: int) -> str:
        return ui.money(Decimal(micros) / 1_000_000)

    ranked = sorted(paths.items(), key=lambda p: (-len(p[1]), -sum(p[1]), p[0]))[:20]
    assert [r["cells"] for r in ui.table(report, "#paths")] == [
        [str(i), " > ".join(map(ui.label, path)), str(len(m)), share(len(m)), money(sum(m))]
        for i, (path, m) in enumerate(ranked, start=1)]
    for table_id, groups in (("#journey-lengths", lengths), ("#time-to-conversion", times)):
        shown = [r["cells"][:4] for r in ui.table(report, table_id)]
        assert shown == [[label, str(count), share(count), money(total)] for label, count, total in _counted(groups)]
        assert sum(int(cells[1]) for cells in shown) == n
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-paths.png", at=report.locator("#paths-title"), height=1300)

    # With a channel picked: the conversions with a session of it, their whole paths.
    report = ui.open_report(page, urlencode({"start": START, "end": END, "channel": "Referral"}))
    with_referral = [s for s in journeys.values() if any(x[5] == "Referral" for x in s)]
    expect(report.locator("#paths-scope")).to_contain_text(f"{len(with_referral)} attributed conversion(s)")
    assert all("Referral" in cells[1] for cells in (r["cells"] for r in ui.table(report, "#paths")))


def test_the_previous_period(page, run_id):
    earlier = ui.totals(ui.open_report(page, urlencode({"start": PREVIOUS[0], "end": PREVIOUS[1]})))
    report = ui.open_report(page, urlencode({"start": HALF[0], "end": HALF[1]}))
    expect(report.locator("#comparison-periods")).to_contain_text(
        f"{HALF[0]} to {HALF[1]} against {PREVIOUS[0]} to {PREVIOUS[1]}, the 7 day(s) before it")
    now = ui.totals(report)
    nothing = ["\u20ac0.00", "0.00", "\u20ac0.00", "n/a", "n/a", "0"]
    rows = ui.table(report, "#period-comparison") + [
        dict(r, channel=None) for r in ui.table(report, "#period-comparison", "foot")]
    assert {r["channel"] for r in rows} == set(now) | set(earlier)
    for row in rows:
        this, before = now.get(row["channel"], nothing), earlier.get(row["channel"], nothing)
        cells = row["cells"][1:]
        # spend, attributed revenue, ROAS, CPO: this period, the previous one, the change
        for k, column in enumerate((0, 2, 4, 3)):
            assert cells[3 * k: 3 * k + 2] == [this[column], before[column]], f"{row['channel']!r}, column {column}"
        for k, column in enumerate((0, 2)):  # money: the change is the difference of the cents shown
            a, b = (Decimal(v.replace("\u20ac", "").replace(",", "")) for v in (this[column], before[column]))
            change = ("+" if a > b else "") + ui.money(a - b)
            if b:
                change += f" ({ui.q((a - b) * 100 / abs(b), Decimal('0.1')):+} %)"
            assert cells[3 * k + 2] == change, f"change of {row['channel']!r}, column {column}"
        for k in (2, 3):
            if "n/a" in cells[3 * k: 3 * k + 2]:
                assert cells[3 * k + 2] == "n/a"
    ui.fits_the_window(report)
    ui.shot(page, "ui-attribution-comparison.png", at=report.locator("#comparison"))

    # Before the first report rows there is nothing to compare with, and the page says so.
    first = ui.query("SELECT MIN(date) FROM channel_reporting")[0][0]
    report = ui.open_report(page, urlencode({"start": first, "end": first}))
    expect(report.locator("#comparison-none")).to_contain_text("there is nothing to compare with")


def test_a_date_that_is_not_one_is_named_and_the_range_shown_is_said(page, run_id):
    report = ui.open_report(page, urlencode({"start": "2024-02-30", "end": END}))
    first = ui.query("SELECT MIN(date) FROM channel_reporting")[0][0]
    shown = max(dt.date.fromisoformat(first), dt.date.fromisoformat(END) - dt.timedelta(days=29)).isoformat()
    expect(report.locator("p.warn")).to_have_text(
        f"start date '2024-02-30' is not a date (YYYY-MM-DD); showing {shown} to {END}, up to 30 days to the end date")
    expect(report.locator('input[name="start"]')).to_have_value(shown)
    expect(report.get_by_role("heading", name=f"{shown} to {END}, all channels")).to_be_visible()
