"""The chart file and the drawings it shares with the report page: escaping, totals that add up,
undefined ratios, readable charts at many channels, self-containment, atomic writes."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import random
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ihc_attribution import charts
from ihc_attribution.export import report_row, report_totals
from ihc_attribution.report_ui import svg

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
    """Rows of the totals table by their first cell (channel label, or "All channels"), without Days."""
    rows = [r for r in parse(page).rows if len(r) == 7 and r[0] != "Channel"]
    return {r[0]: r[1:6] for r in rows}


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
    # title, heading, bar labels and tooltips of both bar charts, legends and hover texts of the trends, table
    assert page.count("&lt;script&gt;") >= 10
    assert table_rows(page)[NASTY][0] == "€15.00"


def test_long_names_are_shortened_in_the_charts_only():
    name = "Paid Search – a very long campaign group name that goes on"
    page = charts.render_chart([report_row(name, "2024-01-01", 10, 1, 20)], "t")
    assert name in table_rows(page)
    assert name[: svg.MAX_LABEL_CHARS - 1] + "\u2026" in page


# --- totals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_totals_per_channel_are_the_sums_of_the_rows(seed):
    rows = random_rows(seed)
    totals = {t.channel_name: t for t in charts.compute_figures(rows).channels}

    assert set(totals) == {r.channel_name for r in rows}
    for name, t in totals.items():
        mine = [r for r in rows if r.channel_name == name]
        assert t.cost == sum((r.cost for r in mine), Decimal(0))
        assert t.ihc == sum((r.ihc for r in mine), Decimal(0))
        assert t.ihc_revenue == sum((r.ihc_revenue for r in mine), Decimal(0))
        assert t.days == len({r.date for r in mine})

    overall = charts.compute_figures(rows).total
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
    (total,) = charts.compute_figures(rows).channels
    assert total.roas == Decimal("1.0000")  # 40 / 40, not the mean of 3 and 0.33
    assert total.cpo == Decimal("10.00")  # 40 / 4


def test_channels_are_ordered_by_attributed_revenue():
    rows = [report_row("small", "2024-01-01", 1, 1, 5), report_row("big", "2024-01-01", 1, 1, 500),
            report_row("mid", "2024-01-01", 1, 1, 50)]
    assert [t.channel_name for t in charts.compute_figures(rows).channels] == ["big", "mid", "small"]


def test_daily_totals_add_up_all_channels():
    rows = random_rows(4)
    days = charts.compute_figures(rows).per_date
    assert [d.channel_name for d in days] == sorted({r.date for r in rows})
    for d in days:
        assert d.cost == sum((r.cost for r in rows if r.date == d.channel_name), Decimal(0))
        assert d.ihc_revenue == sum((r.ihc_revenue for r in rows if r.date == d.channel_name), Decimal(0))


def test_totals_are_the_exports_totals_and_the_csvs_sums():
    rows = random_rows(8, channels=9, days=14)
    exact = report_totals(rows)
    shown = table_rows(charts.render_chart(rows, "t"))["All channels"]
    assert shown[:3] == [charts.money(exact.cost), charts.number(exact.ihc), charts.money(exact.ihc_revenue)]
    assert charts.compute_figures(rows).total.ihc_revenue == exact.ihc_revenue


# --- many channels -----------------------------------------------------------------------------


def many_rows(channels: int = 20, days: int = 10, seed: int = 3):
    """``channels`` channels, one of them with the empty name, over ``days`` days."""
    rng = random.Random(seed)
    names = [""] + [f"Channel {c:02d} with a longer name" for c in range(1, channels)]
    return [report_row(name, f"2024-02-{d + 1:02d}", round(rng.uniform(1, 300), 2), rng.uniform(0.5, 9),
                       rng.uniform(10, 900)) for name in names for d in range(days)]


class Marks(PageParser):
    """Also the label texts (with their y) and the legend entries of each chart, by figure id."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: dict[str, list[tuple[float, str]]] = {}
        self.legends: dict[str, list[str]] = {}
        self.series: dict[str, list[dict]] = {}
        self.heights: dict[str, float] = {}
        self._figure = None
        self._into = None

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        a = dict(attrs)
        if tag == "figure":
            self._figure = a.get("id")
        elif tag == "svg" and self._figure:
            self.heights[self._figure] = float(a["height"])
        elif tag == "text" and a.get("class") == "label":
            self._into = ("labels", float(a["y"]), [])
        elif tag == "li" and self._figure:
            self._into = ("legends", None, [])
        elif tag == "g" and a.get("class") == "series":
            self.series.setdefault(self._figure, []).append(a)

    def handle_endtag(self, tag):
        super().handle_endtag(tag)
        if tag in ("text", "li") and self._into:
            kind, y, text = self._into
            value = "".join(text) if kind == "legends" else (y, "".join(text))
            getattr(self, kind).setdefault(self._figure, []).append(value)
            self._into = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        super().handle_data(data)
        if self._into:
            self._into[2].append(data)


def marks(page: str) -> Marks:
    parser = Marks()
    parser.feed(page)
    parser.close()
    return parser


def test_every_channel_has_its_own_label_and_room_in_the_channel_charts():
    rows = many_rows(20)
    page = marks(charts.render_chart(rows, "t"))
    order = [charts.channel_label(t.channel_name) for t in charts.compute_figures(rows).channels]
    for figure in ("chart-channels", "chart-roas-channels"):
        labels = page.labels[figure]
        assert [svg.short_label(t) if t != "(empty name)" else t for t in order] == [text for _, text in labels]
        ys = [y for y, _ in labels]
        assert min(b - a for a, b in zip(ys, ys[1:])) >= 20, "rows far enough apart for 12 px text"
        assert 0 < ys[0] and ys[-1] < page.heights[figure]
    assert page.heights["chart-channels"] > marks(charts.render_chart(many_rows(5), "t")).heights["chart-channels"]


def test_the_empty_channel_name_reads_the_same_everywhere_in_the_chart_file():
    page = charts.render_chart(many_rows(5), "t")
    found = marks(page)
    assert "(empty name)" in table_rows(page)
    for figure in ("chart-channels", "chart-roas-channels"):
        assert "(empty name)" in [text for _, text in found.labels[figure]]
    for figure in ("chart-daily-cost", "chart-cpo"):
        assert "(empty name)" in found.legends[figure]
    assert "" not in [text for labels in found.labels.values() for _, text in labels]
    assert "\n: " not in page and ">: " not in page  # no tooltip line starts without a name


def _lab(color: str) -> tuple[float, float, float]:
    def linear(c: float) -> float:
        return ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92

    r, g, b = (linear(int(color[i:i + 2], 16) / 255) for i in (1, 3, 5))
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    fx, fy, fz = (v ** (1 / 3) if v > 0.008856 else 7.787 * v + 16 / 116 for v in (x, y, z))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def test_twenty_channels_get_twenty_distinct_colours():
    colors = svg.channel_colors(f"c{i}" for i in range(20))
    assert len(set(colors.values())) == 20
    others = (svg.OTHER_COLOR, svg.TOTAL_COLOR, "#ffffff")
    for a, b in itertools.combinations([*colors.values(), *others], 2):
        assert math.dist(_lab(a), _lab(b)) >= 25, (a, b)
    assert svg.channel_colors(["b", "a", "c"]) == {"a": svg.PALETTE[0], "b": svg.PALETTE[1], "c": svg.PALETTE[2]}


def test_trends_draw_the_top_channels_and_other_the_sum_of_the_rest():
    rows = many_rows(12)
    figures = charts.compute_figures(rows)
    colors = svg.channel_colors(t.channel_name for t in figures.channels)
    lines = svg.trend_lines(figures, colors)
    names = [t.channel_name for t in figures.channels]
    assert [t.name for t in lines[:-1]] == names[: svg.TREND_TOP]
    other = lines[-1]
    assert (other.kind, other.label) == ("other", "Other (6 channels)")
    for i, day in enumerate(figures.dates):
        rest = [r for r in rows if r.date == day and r.channel_name in names[svg.TREND_TOP:]]
        assert other.days[i].cost == sum(r.cost for r in rest)
        assert other.days[i].ihc_revenue == sum(r.ihc_revenue for r in rest)

    picked = svg.trend_lines(figures, colors, [names[9], "not a channel"])
    assert [t.name for t in picked] == [names[9], ""] and picked[-1].label == "Other (11 channels)"
    seven = charts.compute_figures(many_rows(svg.TREND_TOP + 1))
    assert [t.kind for t in svg.trend_lines(seven, colors)] == ["channel"] * (svg.TREND_TOP + 1)


@pytest.mark.parametrize(("values", "bound"), [
    ([10, 12, 11, 13, 9, 12, 11, 12064.42], 13),  # one CPO over a near-zero order count
    ([10, 12, 11, 13, 9, 12, 11, 25], None),  # far out, but not twice the rest: no clipping
    ([10, 12, 11, 13, 9, 12, 11, 14, 16, 15], None),  # nothing far out
    ([1, 2, 5000], None),  # too few values to call one an outlier
    ([0, 0, 0, 0, 0, 0, 0, 0, 3], None),  # the rest is 0: clipping would leave no axis
    ([5, 6, 5, 7, 6, 5, 900, 950, 6, 7, 5, 6, 6, 5, 7, 6, 5, 6], 7),  # two outliers
])
def test_clip_bound_cuts_only_far_outliers(values, bound):
    assert svg.clip_bound([float(v) for v in values]) == bound


def test_a_clipped_point_sits_on_the_top_edge_marked_with_its_value():
    days = tuple(charts.ChannelTotals("A", Decimal(100), Decimal(i + 10) / 10, Decimal(50), 1) for i in range(12))
    days = days[:3] + (charts.ChannelTotals("A", Decimal("125.47"), Decimal("0.0104"), Decimal(2), 1),) + days[4:]
    dates = [f"2024-01-{d + 1:02d}" for d in range(12)]
    trend = svg.Trend("channel", "A", "A", "#000000", days)
    chart = svg.line_chart("c", "CPO", dates, [trend], "cpo", "EUR", clip=True)
    (line,) = chart.lines
    (path,) = line.paths
    assert [x for x, _ in line.clipped] == [float(path.split(" ")[3].split(",")[0])]
    assert "12064.42" in line.values.split(" ")
    assert "2024-01-04: A \u20ac12,064.42 (above the axis)" == line.clipped[0][1]
    assert chart.note.startswith("1 point above \u20ac")
    ys = [float(p.split(",")[1]) for path in line.paths for p in path.split(" ")]
    assert min(ys) == chart.top and max(ys) <= chart.bottom
    rest = ys[:3] + ys[4:]
    assert max(rest) - min(rest) > (chart.bottom - chart.top) / 3, "the other points keep the chart's height"
    unclipped = svg.line_chart("c", "CPO", dates, [trend], "cpo", "EUR", clip=False)
    assert not unclipped.lines[0].clipped and not unclipped.note


@pytest.mark.parametrize(("low", "high"), [(0, 0), (0, 1), (0, 12064.42), (0, 0.37), (-50, 230), (0, 999.99)])
def test_axis_ticks_are_round_and_cover_the_values(low, high):
    ticks = svg.nice_ticks(low, high)
    step = ticks[1] - ticks[0]
    assert ticks[0] <= Decimal(repr(float(low))) and ticks[-1] >= Decimal(repr(float(high)))
    assert 2 <= len(ticks) <= 7
    assert all(b - a == step for a, b in zip(ticks, ticks[1:]))
    assert step.scaleb(-step.adjusted()).normalize() in {Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5)}


@pytest.mark.parametrize("days", [2, 14, 45, 120, 400])
def test_date_labels_never_crowd_and_the_last_date_is_labelled(days):
    dates = [(dt.date(2024, 1, 1) + dt.timedelta(days=d)).isoformat() for d in range(days)]
    trend = svg.Trend("channel", "A", "A", "#000000", tuple(None for _ in dates))
    chart = svg.line_chart("c", "t", dates, [trend], "cost", "EUR")
    xs = [t.at for t in chart.x_ticks]
    width = 70 if days == 400 else 40
    assert all(b - a >= width for a, b in zip(xs, xs[1:]))
    assert chart.x_ticks[-1].text in (dates[-1], dates[-1][5:])
    assert len(chart.columns) == days


@pytest.mark.parametrize(("first", "days"), [("2024-01-01", 14), ("2023-12-20", 22), ("2023-11-01", 91),
                                             ("2023-12-31", 2), ("2023-06-01", 400)])
def test_every_date_label_ends_inside_the_chart(first, days):
    """A date label is centred under its date. With the year (dates over two years) the last one
    used to stick out past the chart's right edge, cut off as "2024-01-3" by the SVG's bounds."""
    dates = [(dt.date.fromisoformat(first) + dt.timedelta(days=d)).isoformat() for d in range(days)]
    trend = svg.Trend("channel", "A", "A", "#000000", tuple(None for _ in dates))
    chart = svg.line_chart("c", "t", dates, [trend], "cost", "EUR")
    for tick in chart.x_ticks:
        half = len(tick.text) * 12 * 0.636 / 2  # 12 px text, each character at most a digit's width (0.636 em)
        assert 0 <= tick.at - half and tick.at + half <= chart.width, tick
    assert chart.x_ticks[-1].at == chart.right  # the last date sits at the plot's right end
    assert max(c.x + c.width for c in chart.columns) == pytest.approx(chart.right, abs=0.1)


# --- undefined ratios --------------------------------------------------------------------------


def test_undefined_roas_and_cpo_show_as_na():
    rows = [
        report_row("Organic", "2024-01-01", 0, 2, 80),  # no spend: ROAS undefined
        report_row("Display", "2024-01-01", 25, 0, 0),  # no attributed order: CPO undefined
        report_row("Search", "2024-01-01", 10, 2, 40),
    ]
    totals = {t.channel_name: t for t in charts.compute_figures(rows).channels}
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
    assert "Daily spend" not in one and "<polyline" not in one
    assert "Daily spend per channel" in two and "<polyline" in two


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
    spend = page.split('id="chart-daily-cost"')[1].split("</figure>")[0]
    revenue = page.split('id="chart-daily-revenue"')[1].split("</figure>")[0]
    assert ">\u20ac1,000<" in spend and ">\u20ac4<" in revenue  # each axis tops at its own maximum
    assert "\u20ac1,000" not in revenue


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
