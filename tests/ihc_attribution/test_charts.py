"""The report page: escaping, totals that add up, undefined ratios, self-containment, atomic writes."""

from __future__ import annotations

import os
import random
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ihc_attribution import charts
from ihc_attribution.export import report_row

NASTY = "<script>alert(\"x\")</script> & 'Co' \"quoted\" </svg><b>"


class PageParser(HTMLParser):
    """Tags, attributes, text, and the cells of every table row of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def table_rows(page: str) -> dict[str, list[str]]:
    """Rows of the totals table by their first cell (channel name, or "All channels")."""
    rows = [r for r in parse(page).rows if len(r) == 6 and r[0] != "Channel"]
    return {r[0]: r[1:] for r in rows}


def random_rows(seed: int, channels: int = 5, days: int = 7):
    rng = random.Random(seed)
    rows = []
    for c in range(channels):
        for d in range(days):
            if rng.random() < 0.2:
                continue  # not every channel has every date
            cost = 0.0 if c == 0 else round(rng.uniform(0, 400), 2)
            ihc = round(rng.uniform(0, 30), 4)
            rows.append(report_row(f"channel {c}", f"2024-01-{d + 1:02d}", cost, ihc, ihc * rng.uniform(5, 90)))
    return rows


# --- escaping ----------------------------------------------------------------------------------


def test_channel_names_and_title_are_escaped_everywhere():
    rows = [report_row(NASTY, "2024-01-01", 10, 2, 50), report_row(NASTY, "2024-01-02", 5, 1, 20),
            report_row("Direct", "2024-01-01", 0, 1, 30)]
    page = charts.render_chart(rows, title=f"Report {NASTY}")
    parsed = parse(page)

    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert "<script" not in page and "</svg><b>" not in page
    # Every occurrence is text again once parsed: the name reads as it is.
    assert NASTY in "".join(parsed.text)
    assert page.count("&lt;script&gt;") >= 4  # title, heading, SVG labels and tooltips, table
    assert table_rows(page)[NASTY][0] == "€15.00"


def test_long_names_are_shortened_in_the_charts_only():
    name = "Paid Search – a very long campaign group name that goes on"
    page = charts.render_chart([report_row(name, "2024-01-01", 10, 1, 20)], "t")
    assert name in table_rows(page)
    assert name[: charts.MAX_LABEL_CHARS - 1] + "\u2026" in page


# --- totals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_totals_per_channel_are_the_sums_of_the_rows(seed):
    rows = random_rows(seed)
    totals = {t.channel_name: t for t in charts.channel_totals(rows)}

    assert set(totals) == {r.channel_name for r in rows}
    for name, t in totals.items():
        mine = [r for r in rows if r.channel_name == name]
        assert t.cost == sum((r.cost for r in mine), Decimal(0))
        assert t.ihc == sum((r.ihc for r in mine), Decimal(0))
        assert t.ihc_revenue == sum((r.ihc_revenue for r in mine), Decimal(0))
        assert t.days == len({r.date for r in mine})

    overall = charts.overall_totals(rows)
    assert overall.cost == sum((t.cost for t in totals.values()), Decimal(0))
    assert overall.ihc_revenue == sum((r.ihc_revenue for r in rows), Decimal(0))

    shown = table_rows(charts.render_chart(rows, "t"))
    for name, t in totals.items():
        assert shown[name][:3] == [charts.money(t.cost), charts.number(t.ihc), charts.money(t.ihc_revenue)]
    assert shown["All channels"][:3] == [
        charts.money(overall.cost), charts.number(overall.ihc), charts.money(overall.ihc_revenue)
    ]


def test_ratios_come_from_the_sums_not_from_averaging_daily_ratios():
    rows = [report_row("A", "2024-01-01", 10, 1, 30), report_row("A", "2024-01-02", 30, 3, 10)]
    (total,) = charts.channel_totals(rows)
    assert total.roas == Decimal("1.0000")  # 40 / 40, not the mean of 3 and 0.33
    assert total.cpo == Decimal("10.00")  # 40 / 4


def test_channels_are_ordered_by_attributed_revenue():
    rows = [report_row("small", "2024-01-01", 1, 1, 5), report_row("big", "2024-01-01", 1, 1, 500),
            report_row("mid", "2024-01-01", 1, 1, 50)]
    assert [t.channel_name for t in charts.channel_totals(rows)] == ["big", "mid", "small"]


def test_daily_totals_add_up_all_channels():
    rows = random_rows(4)
    days = charts.daily_totals(rows)
    assert [d.date for d in days] == sorted({r.date for r in rows})
    for d in days:
        assert d.cost == sum((r.cost for r in rows if r.date == d.date), Decimal(0))
        assert d.ihc_revenue == sum((r.ihc_revenue for r in rows if r.date == d.date), Decimal(0))


# --- undefined ratios --------------------------------------------------------------------------


def test_undefined_roas_and_cpo_show_as_na():
    rows = [
        report_row("Organic", "2024-01-01", 0, 2, 80),  # no spend: ROAS undefined
        report_row("Display", "2024-01-01", 25, 0, 0),  # no attributed order: CPO undefined
        report_row("Search", "2024-01-01", 10, 2, 40),
    ]
    totals = {t.channel_name: t for t in charts.channel_totals(rows)}
    assert totals["Organic"].roas is None and totals["Organic"].cpo == Decimal("0.00")
    assert totals["Display"].cpo is None and totals["Display"].roas == Decimal("0.0000")

    page = charts.render_chart(rows, "t")
    shown = table_rows(page)
    assert shown["Organic"][4] == "n/a"  # ROAS column
    assert shown["Display"][3] == "n/a"  # CPO column
    assert shown["Search"][3:] == ["€5.00", "4.00"]
    assert "n/a (no spend)" in page
    for bad in ("inf", "Infinity", "NaN", "nan"):
        assert bad not in "".join(parse(page).text)


def test_no_spend_at_all_leaves_overall_roas_undefined():
    page = charts.render_chart([report_row("Organic", "2024-01-01", 0, 1, 10)], "t")
    assert table_rows(page)["All channels"][4] == "n/a"


def test_empty_report_says_so():
    page = charts.render_chart([], "Nothing")
    assert "No report rows for this range." in page
    assert "<svg" not in page


def test_single_day_has_no_trend_chart_and_several_days_have_one():
    one = charts.render_chart([report_row("A", "2024-01-01", 1, 1, 2)], "t")
    two = charts.render_chart([report_row("A", "2024-01-01", 1, 1, 2), report_row("A", "2024-01-02", 1, 1, 2)], "t")
    assert "Daily spend" not in one
    assert "Daily spend" in two and "<polyline" in two


# --- self-contained ----------------------------------------------------------------------------


def test_page_loads_nothing_and_runs_nothing():
    url = "http://localhost:8080/plugin/attribution-report/attribution-report/?start=2024-01-01&end=2024-01-07"
    page = charts.render_chart(random_rows(5), "t", csv_name="channel_reporting_2024-01-01_2024-01-07.csv",
                               report_url=url)
    parsed = parse(page)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert not [name for name, _ in parsed.attrs if name == "src" or name.startswith("on")]
    # Links only: to the CSV beside it, and to the report page of its range.
    assert [v for name, v in parsed.attrs if name == "href"] == ["channel_reporting_2024-01-01_2024-01-07.csv", url]
    assert "default-src 'none'" in page  # the page's own CSP forbids loading anything


def test_daily_spend_and_revenue_each_have_their_own_axis():
    rows = [report_row("A", "2024-01-01", 1000, 1, 2), report_row("A", "2024-01-02", 500, 1, 4)]
    page = charts.render_chart(rows, "t")
    spend, revenue = page.split("<h2>Daily spend, all channels</h2>")[1].split(
        "<h2>Daily attributed revenue, all channels</h2>")
    revenue = revenue.split("<h2>")[0]
    assert "\u20ac1,000.00" in spend and "\u20ac4.00" in revenue  # each axis tops at its own maximum
    assert "\u20ac1,000.00" not in revenue


def test_currency_is_configurable(monkeypatch):
    rows = [report_row("A", "2024-01-01", 10, 1, 30)]
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "gbp")
    assert table_rows(charts.render_chart(rows, "t"))["A"][0] == "\u00a310.00"
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "SEK")
    assert table_rows(charts.render_chart(rows, "t"))["A"][0] == "SEK\u00a010.00"
    monkeypatch.setenv("ATTRIBUTION_CURRENCY", "euro")
    with pytest.raises(ValueError, match="ATTRIBUTION_CURRENCY"):
        charts.render_chart(rows, "t")


def test_report_url_of_a_range(monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_UI_BASE_URL", "https://airflow.example/")
    assert charts.report_url("2024-01-01", "2024-01-31") == (
        "https://airflow.example/plugin/attribution-report/attribution-report/?start=2024-01-01&end=2024-01-31")
    assert charts.report_url("2024-01-01", "2024-01-01", "http://h:8081", ["A & B"]).endswith(
        "?start=2024-01-01&end=2024-01-01&channel=A+%26+B")
    monkeypatch.delenv("ATTRIBUTION_UI_BASE_URL")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://ui.example:9000")
    assert charts.ui_base_url() == "http://ui.example:9000"


# --- atomic write ------------------------------------------------------------------------------


def test_write_chart_writes_the_page_and_no_temp_file(tmp_path):
    target = tmp_path / "out" / "channel_reporting_2024-01-01_2024-01-07.html"
    rows = random_rows(6)
    assert charts.write_chart(rows, target, "Week 1") == target
    assert target.read_text(encoding="utf-8") == charts.render_chart(rows, "Week 1")
    assert os.listdir(target.parent) == [target.name]
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["os.fsync", "os.replace"])
def test_failed_write_keeps_the_previous_page(tmp_path, monkeypatch, failing):
    target = tmp_path / "chart.html"
    target.write_text("previous page")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(failing, boom)
    with pytest.raises(OSError, match="disk full"):
        charts.write_chart(random_rows(7), target, "t")
    assert target.read_text() == "previous page"
    assert os.listdir(tmp_path) == ["chart.html"]


def test_chart_path_sits_next_to_the_csv():
    csv_file = Path("/data/output/channel_reporting_2024-01-01_2024-01-31.csv")
    assert charts.chart_path(csv_file) == Path("/data/output/channel_reporting_2024-01-01_2024-01-31.html")
