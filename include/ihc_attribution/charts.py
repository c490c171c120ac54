"""The report as a page a marketer can read: spend against attributed revenue, ROAS, totals.

:func:`write_chart` turns the rows of an exported report into one self-contained HTML file:
inline SVG and CSS, no script, no external resource (a Content-Security-Policy forbids them),
so it opens from disk, from an e-mail attachment or behind the Airflow UI alike. Every text that
comes from the data, channel names above all, is HTML-escaped. Ratios follow the export: where
the denominator is 0 the value is undefined and shown as "n/a", never as 0 or infinity. The file
is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from ihc_attribution.export import ReportRow, atomic_write

_CENT = Decimal("0.01")
_FOUR = Decimal("0.0001")
_ZERO = Decimal(0)

SPEND_COLOR = "#8d99ae"
REVENUE_COLOR = "#2a9d8f"
ROAS_COLOR = "#e9c46a"
LOSS_COLOR = "#e76f51"
MAX_LABEL_CHARS = 26


@dataclass(frozen=True)
class ChannelTotals:
    """Sums of the report rows of one channel (or of all channels) over the range."""

    channel_name: str
    cost: Decimal
    ihc: Decimal
    ihc_revenue: Decimal
    days: int

    @property
    def cpo(self) -> Decimal | None:
        """Cost per attributed order; ``None`` without attributed orders."""
        return (self.cost / self.ihc).quantize(_CENT, ROUND_HALF_UP) if self.ihc != 0 else None

    @property
    def roas(self) -> Decimal | None:
        """Attributed revenue per unit of spend; ``None`` without spend."""
        return (self.ihc_revenue / self.cost).quantize(_FOUR, ROUND_HALF_UP) if self.cost != 0 else None


@dataclass(frozen=True)
class DayTotals:
    """Spend and attributed revenue of all channels on one date."""

    date: str
    cost: Decimal
    ihc_revenue: Decimal


def _sum(name: str, rows: Sequence[ReportRow]) -> ChannelTotals:
    return ChannelTotals(
        channel_name=name,
        cost=sum((r.cost for r in rows), _ZERO),
        ihc=sum((r.ihc for r in rows), _ZERO),
        ihc_revenue=sum((r.ihc_revenue for r in rows), _ZERO),
        days=len({r.date for r in rows}),
    )


def channel_totals(rows: Iterable[ReportRow]) -> list[ChannelTotals]:
    """Totals per channel, by attributed revenue, then spend (both descending), then name."""
    by_channel: dict[str, list[ReportRow]] = {}
    for row in rows:
        by_channel.setdefault(row.channel_name, []).append(row)
    totals = [_sum(name, channel_rows) for name, channel_rows in by_channel.items()]
    return sorted(totals, key=lambda t: (-t.ihc_revenue, -t.cost, t.channel_name))


def overall_totals(rows: Iterable[ReportRow]) -> ChannelTotals:
    """Totals of all channels over the range."""
    return _sum("All channels", list(rows))


def daily_totals(rows: Iterable[ReportRow]) -> list[DayTotals]:
    """Spend and attributed revenue of all channels per date, in date order."""
    days: dict[str, tuple[Decimal, Decimal]] = {}
    for row in rows:
        cost, revenue = days.get(row.date, (_ZERO, _ZERO))
        days[row.date] = (cost + row.cost, revenue + row.ihc_revenue)
    return [DayTotals(date, cost, revenue) for date, (cost, revenue) in sorted(days.items())]


# --- formatting --------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def money(value: Decimal | None) -> str:
    """``€1,234.56``; ``n/a`` for an undefined value."""
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""
    return f"{sign}€{abs(value).quantize(_CENT, ROUND_HALF_UP):,}"


def number(value: Decimal | None, places: int = 2) -> str:
    """A number with thousands separators and ``places`` decimals; ``n/a`` if undefined."""
    if value is None:
        return "n/a"
    return f"{value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP):,}"


def _label(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "\u2026"


def _width(value: Decimal, scale: Decimal, full: int) -> float:
    if scale <= 0 or value <= 0:
        return 0.0
    return round(float(value / scale) * full, 1)


# --- SVG ---------------------------------------------------------------------------------------

_LABEL_W, _BAR_W, _VALUE_W = 190, 430, 110
_SVG_W = _LABEL_W + _BAR_W + _VALUE_W


def spend_revenue_svg(totals: Sequence[ChannelTotals]) -> str:
    """Grouped horizontal bars: spend and attributed revenue per channel."""
    group_h, bar_h, top = 38, 13, 30
    height = top + group_h * len(totals) + 8
    scale = max([t.cost for t in totals] + [t.ihc_revenue for t in totals] + [_ZERO])
    parts = [
        f'<svg class="chart" role="img" aria-labelledby="spend-revenue-title" viewBox="0 0 {_SVG_W} {height}" '
        f'width="{_SVG_W}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="spend-revenue-title">Spend and attributed revenue per channel</title>',
        f'<rect x="{_LABEL_W}" y="6" width="12" height="12" fill="{SPEND_COLOR}"/>'
        f'<text x="{_LABEL_W + 18}" y="16" class="legend">Spend</text>',
        f'<rect x="{_LABEL_W + 90}" y="6" width="12" height="12" fill="{REVENUE_COLOR}"/>'
        f'<text x="{_LABEL_W + 108}" y="16" class="legend">Attributed revenue</text>',
    ]
    for i, t in enumerate(totals):
        y = top + i * group_h
        name = _esc(t.channel_name)
        parts.append(f'<g class="channel"><title>{name}: spend {money(t.cost)}, attributed revenue '
                     f'{money(t.ihc_revenue)}</title>')
        parts.append(f'<text x="{_LABEL_W - 8}" y="{y + bar_h + 4}" class="label" text-anchor="end">'
                     f'{_esc(_label(t.channel_name))}</text>')
        for j, (value, color) in enumerate(((t.cost, SPEND_COLOR), (t.ihc_revenue, REVENUE_COLOR))):
            w = _width(value, scale, _BAR_W)
            by = y + j * (bar_h + 2)
            parts.append(f'<rect x="{_LABEL_W}" y="{by}" width="{w}" height="{bar_h}" fill="{color}"/>')
            parts.append(f'<text x="{_LABEL_W + w + 6}" y="{by + bar_h - 2}" class="value">{money(value)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def roas_svg(totals: Sequence[ChannelTotals]) -> str:
    """Horizontal bars of ROAS per channel, a break-even line at 1; undefined ROAS as "n/a"."""
    row_h, bar_h, top = 26, 16, 24
    height = top + row_h * len(totals) + 8
    defined = [t.roas for t in totals if t.roas is not None]
    scale = max(defined + [Decimal(1)])
    parts = [
        f'<svg class="chart" role="img" aria-labelledby="roas-title" viewBox="0 0 {_SVG_W} {height}" '
        f'width="{_SVG_W}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="roas-title">ROAS per channel (attributed revenue / spend)</title>',
    ]
    even_x = _LABEL_W + _width(Decimal(1), scale, _BAR_W)
    # Drawn first, so bars and (haloed) values sit on top of it.
    parts.append(f'<line x1="{even_x}" y1="{top - 6}" x2="{even_x}" y2="{height - 4}" class="even"/>')
    parts.append(f'<text x="{even_x + 4}" y="{top - 10}" class="legend">break-even (1.0)</text>')
    for i, t in enumerate(totals):
        y = top + i * row_h
        name = _esc(t.channel_name)
        roas = t.roas
        shown = "n/a" if roas is None else number(roas)
        parts.append(f'<g class="channel"><title>{name}: ROAS {shown}'
                     f'{" (no spend)" if roas is None else ""}</title>')
        parts.append(f'<text x="{_LABEL_W - 8}" y="{y + bar_h - 3}" class="label" text-anchor="end">'
                     f'{_esc(_label(t.channel_name))}</text>')
        if roas is None:  # right of the break-even line, which would cross the text
            parts.append(f'<text x="{max(_LABEL_W, even_x) + 6}" y="{y + bar_h - 3}" class="value na">'
                         "n/a (no spend)</text>")
        else:
            w = _width(roas, scale, _BAR_W)
            color = ROAS_COLOR if roas >= 1 else LOSS_COLOR
            parts.append(f'<rect x="{_LABEL_W}" y="{y}" width="{w}" height="{bar_h}" fill="{color}"/>')
            parts.append(f'<text x="{_LABEL_W + w + 6}" y="{y + bar_h - 3}" class="value">{shown}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def daily_svg(days: Sequence[DayTotals]) -> str:
    """Lines of daily spend and attributed revenue (all channels); empty for fewer than 2 days."""
    if len(days) < 2:
        return ""
    left, right, top, plot_h = 70, 20, 28, 180
    width, height = _SVG_W, top + plot_h + 34
    plot_w = width - left - right
    scale = max([d.cost for d in days] + [d.ihc_revenue for d in days] + [_ZERO])
    step = plot_w / (len(days) - 1)

    def xy(i: int, value: Decimal) -> tuple[float, float]:
        y = top + plot_h - (float(value / scale) * plot_h if scale > 0 and value > 0 else 0.0)
        return round(left + i * step, 1), round(y, 1)

    parts = [
        f'<svg class="chart" role="img" aria-labelledby="daily-title" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="daily-title">Daily spend and attributed revenue, all channels</title>',
        f'<rect x="{left}" y="6" width="12" height="12" fill="{SPEND_COLOR}"/>'
        f'<text x="{left + 18}" y="16" class="legend">Spend</text>',
        f'<rect x="{left + 90}" y="6" width="12" height="12" fill="{REVENUE_COLOR}"/>'
        f'<text x="{left + 108}" y="16" class="legend">Attributed revenue</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>',
        f'<text x="{left - 6}" y="{top + 4}" class="value" text-anchor="end">{money(scale)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" class="value" text-anchor="end">{money(_ZERO)}</text>',
    ]
    for attr, color in (("cost", SPEND_COLOR), ("ihc_revenue", REVENUE_COLOR)):
        points = " ".join("{},{}".format(*xy(i, getattr(d, attr))) for i, d in enumerate(days))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2.5"/>')
    every = max(1, round(len(days) / 8))
    for i, d in enumerate(days):
        (x, y_cost), (_, y_revenue) = xy(i, d.cost), xy(i, d.ihc_revenue)
        parts.append(f'<g><title>{_esc(d.date)}: spend {money(d.cost)}, attributed revenue '
                     f'{money(d.ihc_revenue)}</title>'
                     f'<circle cx="{x}" cy="{y_cost}" r="3" fill="{SPEND_COLOR}"/>'
                     f'<circle cx="{x}" cy="{y_revenue}" r="3" fill="{REVENUE_COLOR}"/></g>')
        if (len(days) - 1 - i) % every == 0:  # evenly spaced, always the last date
            parts.append(f'<text x="{left + i * step:.1f}" y="{top + plot_h + 18}" class="value" '
                         f'text-anchor="middle">{_esc(d.date[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- page --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2433;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5c6578;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #dde2ea;border-radius:8px;padding:10px 16px;min-width:120px}
.card .k{font-size:12px;color:#5c6578;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin-top:2px}
.chart{max-width:100%;height:auto;font-size:12px}
.chart .label{fill:#1d2433}.chart .value,.chart .legend{fill:#3d4657}
.chart .value,.chart .na{paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}
.chart .na{fill:#8a93a5;font-style:italic}
.chart .even{stroke:#5c6578;stroke-dasharray:4 3}.chart .axis{stroke:#b8c0cc}
table{border-collapse:collapse;margin-top:6px;font-size:14px}
th,td{padding:6px 12px;border-bottom:1px solid #e6e9ef;text-align:right}
th:first-child,td:first-child{text-align:left;max-width:340px;overflow-wrap:anywhere}
thead th{background:#f4f6f9}tfoot td{font-weight:600;border-top:2px solid #c9d0da}
.na{color:#8a93a5}.note{color:#5c6578;font-size:13px;margin-top:18px}
"""


def _cell(text: str) -> str:
    return f'<td class="na">{text}</td>' if text == "n/a" else f"<td>{text}</td>"


def _table_row(t: ChannelTotals) -> str:
    cells = (money(t.cost), number(t.ihc), money(t.ihc_revenue), money(t.cpo), number(t.roas))
    return f"<tr><td>{_esc(t.channel_name)}</td>" + "".join(_cell(c) for c in cells) + "</tr>"


def render_chart(rows: Sequence[ReportRow], title: str) -> str:
    """The whole HTML page for the report rows (see the module docstring)."""
    rows = list(rows)
    per_channel = channel_totals(rows)
    total = overall_totals(rows)
    dates = sorted({r.date for r in rows})
    span = f"{dates[0]} to {dates[-1]}" if dates else "no data"
    head = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f'<p class="sub">Channel report by session date, {_esc(span)}: {len(per_channel)} channel(s), '
        f"{len(rows)} report row(s). Attribution by the IHC model.</p>"
    )
    if not rows:
        return head + '<p class="na">No report rows for this range.</p></body></html>\n'
    cards = [
        ("Spend", money(total.cost)),
        ("Attributed revenue", money(total.ihc_revenue)),
        ("ROAS", number(total.roas)),
        ("Attributed orders", number(total.ihc)),
        ("CPO", money(total.cpo)),
    ]
    body = [
        '<div class="cards">',
        *(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards),
        "</div>",
        "<h2>Spend and attributed revenue per channel</h2>",
        spend_revenue_svg(per_channel),
        "<h2>ROAS per channel</h2>",
        roas_svg(per_channel),
    ]
    trend = daily_svg(daily_totals(rows))
    if trend:
        body += ["<h2>Daily spend and attributed revenue, all channels</h2>", trend]
    body += [
        "<h2>Totals per channel</h2>",
        "<table><thead><tr><th>Channel</th><th>Spend</th><th>Attributed orders</th>"
        "<th>Attributed revenue</th><th>CPO</th><th>ROAS</th></tr></thead><tbody>",
        *(_table_row(t) for t in per_channel),
        "</tbody><tfoot>",
        _table_row(total),
        "</tfoot></table>",
        '<p class="note">ROAS = attributed revenue / spend; CPO = spend / attributed orders; '
        "n/a where the denominator is 0. Spend counts every session of the channel and date, "
        "converting or not.</p>",
        "</body></html>\n",
    ]
    return head + "".join(body)


def chart_path(csv_file: str | Path) -> Path:
    """The chart next to an exported CSV: same name, ``.html``."""
    return Path(csv_file).with_suffix(".html")


def write_chart(rows: list[ReportRow], path: Path, title: str) -> Path:
    """Write the report page for ``rows`` to ``path`` atomically; return ``path``.

    The page is built in memory, written to a temporary file in the target folder, synced and
    renamed over ``path``: readers see the previous complete page or the new one, never a part.
    """
    page = render_chart(rows, title)
    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(page)
    return path
