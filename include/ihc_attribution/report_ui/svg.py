"""The report's charts as drawings: where each bar, line, tick and label goes, and its text.

The chart file and the report page draw the same charts: the functions here turn figures into
geometry and text, the macros of ``templates/parts.html.j2`` write them as inline SVG (a mark's
tooltip is its ``<title>``; no script). Bar charts have a labelled row per channel; trend charts
draw the channels picked (by default the :data:`TREND_TOP`) and "Other", the sum of the rest;
outliers of a ratio sit on the top edge (:func:`clip_bound`); a channel keeps its colour by name.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, NamedTuple

from ihc_attribution.charts import ChannelTotals, Figures, channel_label, combine, currency_symbol, money, number
from ihc_attribution.export import round_ihc, round_money

TREND_TOP = 6
MIN_POINTS_TO_CLIP = 8
MAX_DOTS = 45
MAX_LABEL_CHARS = 28
WIDTH = 620
LABEL_W, BAR_W = 190, 320
LEFT, RIGHT, TOP, PLOT_H, BOTTOM_H = 76, 26, 12, 210, 24
SHORT_DATE_W, LONG_DATE_W = 44, 74  # the room of a date label at 12 px: "01-14", "2024-01-14"
SPEND_COLOR = "#8d99ae"
REVENUE_COLOR = "#2a9d8f"
ROAS_COLOR = "#e9c46a"
LOSS_COLOR = "#e76f51"
OTHER_COLOR = "#7f7f7f"
TOTAL_COLOR = "#1d2433"
# 20 colours, each at least 27 (CIE76 delta E) from every other, from white, from the grey of
# "Other" and from the dark dashed line of the selection.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#0000ff", "#ff22ff", "#224400", "#4411aa", "#ff0077", "#886600", "#77bb88",
    "#770055", "#0077ff", "#ff8888", "#dd00aa",
)  # fmt: skip
_ZERO = Decimal(0)


def channel_colors(names: Iterable[str]) -> dict[str, str]:
    """The colour of each channel by its place among ``names`` in name order (distinct up to ``len(PALETTE)``)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def short_label(name: str) -> str:
    label = channel_label(name)
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "\u2026"


# --- bars --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One bar, its value as the tables show it (``text``) and as the CSV rounds it (``value``)."""

    x: float
    y: float
    width: float
    height: float
    color: str
    text: str
    value: str


@dataclass(frozen=True)
class BarRow:
    """The bars of one channel, with its label and tooltip; ``note`` stands where no bar can."""

    name: str
    label: str
    tooltip: str
    label_y: float
    bars: tuple[Bar, ...]
    note: str = ""
    note_x: float = 0.0


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars, one row per channel; ``guide_x``: where a break-even line stands, if any."""

    id: str
    title: str
    height: float
    rows: tuple[BarRow, ...]
    legend: tuple[tuple[str, str, bool], ...] = ()
    guide_x: float | None = None
    width: int = WIDTH
    label_x: int = LABEL_W - 8


def _length(value: Decimal, scale: Decimal) -> float:
    return 0.0 if scale <= 0 or value <= 0 else round(float(value / scale) * BAR_W, 1)


def spend_revenue_chart(channels: Sequence[ChannelTotals], currency: str) -> BarChart:
    """Spend and attributed revenue of each channel, side by side."""
    group_h, bar_h, top = 34, 12, 6
    scale = max([t.cost for t in channels] + [t.ihc_revenue for t in channels] + [_ZERO])
    rows = []
    for i, t in enumerate(channels):
        y = top + i * group_h
        bars = tuple(Bar(LABEL_W, y + j * (bar_h + 2), _length(v, scale), bar_h, color, *_shown(v, "cost", currency))
                     for j, (v, color) in enumerate(((t.cost, SPEND_COLOR), (t.ihc_revenue, REVENUE_COLOR))))
        tooltip = (f"{channel_label(t.channel_name)}: spend {money(t.cost, currency)}, "
                   f"attributed revenue {money(t.ihc_revenue, currency)}")
        rows.append(BarRow(t.channel_name, short_label(t.channel_name), tooltip, y + bar_h + 4, bars))
    return BarChart("chart-channels", "Spend and attributed revenue per channel", top + group_h * len(channels) + 4,
                    tuple(rows), legend=(("Spend", SPEND_COLOR, False), ("Attributed revenue", REVENUE_COLOR, False)))


def roas_chart(channels: Sequence[ChannelTotals]) -> BarChart:
    """ROAS of each channel against a break-even line at 1; "n/a (no spend)" where undefined."""
    row_h, bar_h, top = 24, 15, 22
    height = top + row_h * len(channels) + 4
    scale = max([t.roas for t in channels if t.roas is not None] + [Decimal(1)])
    even_x = LABEL_W + _length(Decimal(1), scale)
    rows = []
    for i, t in enumerate(channels):
        y, roas = top + i * row_h, t.roas
        bars = () if roas is None else (
            Bar(LABEL_W, y, _length(roas, scale), bar_h, ROAS_COLOR if roas >= 1 else LOSS_COLOR, *_shown(roas, "roas", "")),)
        note = "" if bars else "n/a (no spend)"  # right of the break-even line, which would cross the text
        rows.append(BarRow(t.channel_name, short_label(t.channel_name),
                           f"{channel_label(t.channel_name)}: ROAS {note or number(roas)}",
                           y + bar_h - 3, bars, note, max(LABEL_W, even_x) + 6))
    return BarChart("chart-roas-channels", "ROAS per channel (attributed revenue / spend)", height, tuple(rows),
                    guide_x=even_x)


# --- trends ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """One line of the trend charts before drawing: a channel, "Other", or the whole selection."""

    kind: str  # "channel", "other" or "total"
    name: str
    label: str
    color: str
    days: tuple[ChannelTotals | None, ...]
    dashed: bool = False


def trend_lines(figures: Figures, colors: dict[str, str], picked: Sequence[str] = ()) -> list[Trend]:
    """The channels ``picked`` (default: the :data:`TREND_TOP` with the most attributed revenue), then
    "Other", the sum of the rest; with no pick, one channel more than :data:`TREND_TOP` draws them all
    (an "Other" of one channel would only hide its name)."""
    names = [t.channel_name for t in figures.channels]
    chosen = set(picked) & set(names)
    if chosen:
        drawn = [n for n in names if n in chosen]
    else:
        drawn = names if len(names) <= TREND_TOP + 1 else names[:TREND_TOP]
    rest = [n for n in names if n not in drawn]
    lines = [Trend("channel", n, channel_label(n), colors.get(n, OTHER_COLOR), figures.daily[n]) for n in drawn]
    if rest:
        days = tuple(combine("Other", (figures.daily[n][i] for n in rest)) for i in range(len(figures.dates)))
        lines.append(Trend("other", "", f"Other ({len(rest)} channel{'s' if len(rest) > 1 else ''})",
                           OTHER_COLOR, days))
    return lines


def lines_note(lines: Sequence[Trend], picked: bool) -> str:
    """What the trend charts draw, in words."""
    shown = sum(1 for t in lines if t.kind == "channel")
    channels = f"{shown} channel{'s' if shown != 1 else ''}"
    other = next((t for t in lines if t.kind == "other"), None)
    if other is None:
        return f"Lines: the {channels} picked." if picked else "Lines: every channel of the selection."
    head = f"the {channels} picked" if picked else f"the {channels} with the most attributed revenue"
    return f"Lines: {head}, and {other.label}, the sum of the rest."


# An axis label at a position (x for dates, y for values); the hover area of a date, every line's value its tooltip.
Tick = NamedTuple("Tick", [("at", float), ("text", str)])
Column = NamedTuple("Column", [("x", float), ("width", float), ("tooltip", str)])


@dataclass(frozen=True)
class Line:
    """A trend as drawn: runs of points between gaps, dots, points clipped to the top edge, and ``values``
    as the CSV rounds them (space-separated, ``n/a`` where undefined)."""

    trend: Trend
    paths: tuple[str, ...]
    dots: tuple[tuple[float, float], ...]
    clipped: tuple[tuple[float, str], ...]
    values: str

    @property
    def legend(self) -> tuple[str, str, bool]:
        return self.trend.label, self.trend.color, self.trend.dashed


@dataclass(frozen=True)
class LineChart:
    """A trend chart: lines over the dates, value axis ticks, date labels, hover columns."""

    id: str
    title: str
    lines: tuple[Line, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    columns: tuple[Column, ...]
    note: str = ""
    width: int = WIDTH
    height: int = TOP + PLOT_H + BOTTOM_H
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = TOP + PLOT_H


def clip_bound(values: Iterable[float]) -> float | None:
    """Where a ratio chart's axis ends when outliers would flatten it, else ``None``.

    Values above ``Q3 + 3 * IQR`` are outliers; the axis ends at the largest value that is not,
    provided the largest value is more than twice that (a lesser excess costs little height).
    Fewer than :data:`MIN_POINTS_TO_CLIP` values never clip.
    """
    ordered = sorted(values)
    if len(ordered) < MIN_POINTS_TO_CLIP:
        return None
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    fence = q3 + 3 * (q3 - q1)
    inside = [v for v in ordered if v <= fence]
    if not inside or inside[-1] <= 0 or ordered[-1] <= 2 * inside[-1]:
        return None
    return inside[-1]


def nice_ticks(low: float, high: float, count: int = 4) -> list[Decimal]:
    """Round axis values from at or below ``low`` to at or above ``high``, about ``count`` steps."""
    span = high - low if high > low else (abs(high) or 1.0)
    raw = span / count
    exponent = math.floor(math.log10(raw))
    step = next(s for s in (Decimal(m).scaleb(exponent) for m in ("1", "2", "2.5", "5", "10")) if float(s) >= raw)
    first = (Decimal(repr(low)) / step).to_integral_value(ROUND_FLOOR)
    last = max((Decimal(repr(high)) / step).to_integral_value(ROUND_CEILING), first + 1)
    return [step * k for k in range(int(first), int(last) + 1)]


def _tick_text(value: Decimal, step: Decimal, metric: str, currency: str) -> str:
    places = max(0, -step.normalize().as_tuple().exponent)
    sign = "-" if value < 0 else ""
    return sign + ("" if metric == "roas" else currency_symbol(currency)) + f"{abs(value):,.{places}f}"


def _value(day: ChannelTotals | None, metric: str) -> Decimal | None:
    if day is None:  # no row: no session, nothing spent or attributed, no ratio
        return _ZERO if metric in ("cost", "ihc_revenue") else None
    return getattr(day, metric)


def _shown(value: Decimal | None, metric: str, currency: str) -> tuple[str, str]:
    """The value as the tables show it, and as the CSV rounds it."""
    if value is None:
        return "n/a", "n/a"
    if metric == "roas":
        return number(value), str(round_ihc(value))
    return money(value, currency), str(round_money(value))


def _date_width(dates: Sequence[str]) -> int:
    """The room of a date label: with the year when the dates span two years."""
    return LONG_DATE_W if dates[0][:4] != dates[-1][:4] else SHORT_DATE_W


def _date_ticks(dates: Sequence[str], xs: Sequence[float], right: int) -> tuple[Tick, ...]:
    long = _date_width(dates) == LONG_DATE_W
    every = max(1, math.ceil(len(dates) * _date_width(dates) / (right - LEFT)))
    # evenly spaced, always the last date
    return tuple(Tick(xs[i], d if long else d[5:]) for i, d in enumerate(dates) if (len(dates) - 1 - i) % every == 0)


def _columns(dates: Sequence[str], xs: Sequence[float], lines: Sequence[Trend], shown: list, right: int) -> tuple:
    edges = [LEFT] + [(a + b) / 2 for a, b in zip(xs, xs[1:])] + [right]
    return tuple(
        Column(round(edges[i], 1), round(edges[i + 1] - edges[i], 1),
               "\n".join([d] + [f"{t.label}: {shown[k][i]}" for k, t in enumerate(lines)]))
        for i, d in enumerate(dates)
    )


def _draw_line(trend: Trend, ys: Sequence[float | None], xs: Sequence[float], tips: Sequence[str],
               clipped: Sequence[bool], values: str) -> Line:
    points = [None if y is None else (x, y) for x, y in zip(xs, ys)]
    runs = [list(run) for drawn, run in itertools.groupby(points, key=lambda p: p is not None) if drawn]
    many = len(xs) > MAX_DOTS
    dots = tuple(p for r in runs for p in r if not many or len(r) == 1)
    return Line(trend, tuple(" ".join(f"{x},{y}" for x, y in r) for r in runs if len(r) > 1), dots,
                tuple((xs[i], tips[i]) for i, c in enumerate(clipped) if c), values)


def line_chart(chart_id: str, title: str, dates: Sequence[str], trends: Sequence[Trend], metric: str,
               currency: str, *, clip: bool = False) -> LineChart:
    """One trend chart of ``metric`` (``cost``, ``ihc_revenue``, ``roas`` or ``cpo``) for ``trends`` over two dates or more."""
    values = [[_value(d, metric) for d in t.days] for t in trends]
    floats = [float(v) for vs in values for v in vs if v is not None]
    ceiling = clip_bound(floats) if clip else None
    ticks = nice_ticks(min([0.0, *floats]), ceiling if ceiling is not None else max([0.0, *floats]))
    low, high = float(ticks[0]), float(ticks[-1])
    right = WIDTH - max(RIGHT, _date_width(dates) // 2 + 2)  # the last date's label, centred, ends inside
    step = (right - LEFT) / (len(dates) - 1)
    xs = [round(LEFT + i * step, 1) for i in range(len(dates))]

    def y(v: float) -> float:
        return round(TOP + PLOT_H - (min(v, high) - low) / (high - low) * PLOT_H, 1)

    lines, shown = [], []
    for t, vs in zip(trends, values):
        texts, exact = zip(*(_shown(v, metric, currency) for v in vs))
        tips = [f"{d}: {t.label} {text} (above the axis)" for d, text in zip(dates, texts)]
        over = [v is not None and float(v) > high for v in vs]
        lines.append(_draw_line(t, [None if v is None else y(float(v)) for v in vs], xs, tips, over, " ".join(exact)))
        shown.append(texts)
    n_clipped = sum(len(line.clipped) for line in lines)
    top_text = _tick_text(ticks[-1], ticks[1] - ticks[0], metric, currency)
    note = (f"{n_clipped} point{'s' if n_clipped > 1 else ''} above {top_text} drawn on the top edge (\u25b2); "
            "hover for the value.") if n_clipped else ""
    return LineChart(
        chart_id, title, tuple(lines),
        tuple(Tick(y(float(v)), _tick_text(v, ticks[1] - ticks[0], metric, currency)) for v in ticks),
        _date_ticks(dates, xs, right), _columns(dates, xs, trends, shown, right), note, right=right,
    )


TRENDS = (
    ("chart-daily-cost", "Daily spend per channel", "cost", False),
    ("chart-daily-revenue", "Daily attributed revenue per channel", "ihc_revenue", False),
    ("chart-roas", "ROAS over time (attributed revenue / spend)", "roas", True),
    ("chart-cpo", "CPO over time (spend / attributed orders)", "cpo", True),
)


def report_charts(figures: Figures, colors: dict[str, str], currency: str, picked: Sequence[str] = ()) -> dict[str, Any]:
    """Every chart of the report: ``channels`` and ``roas`` (bars), ``trends`` (none for one date),
    and ``lines_note``, what the trend charts draw."""
    lines = trend_lines(figures, colors, picked)
    note = lines_note(lines, bool(set(picked) & set(figures.daily)))
    total = Trend("total", "", "Selection", TOTAL_COLOR, figures.per_date, dashed=True)
    trends = []
    if len(figures.dates) > 1:
        for chart_id, title, metric, ratio in TRENDS:
            drawn = [*lines, total] if ratio and len(figures.channels) > 1 else lines
            trends.append(line_chart(chart_id, title, figures.dates, drawn, metric, currency, clip=ratio))
    return {"channels": spend_revenue_chart(figures.channels, currency), "roas": roas_chart(figures.channels),
            "trends": trends, "lines_note": note}
