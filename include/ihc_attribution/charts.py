"""The report's figures, computed once, and the chart page written next to each CSV.

:func:`compute_figures` sums report rows into everything the report shows: totals of the
selection, totals per channel and per date, and per-channel daily values, with CPO and ROAS from
:func:`ihc_attribution.export.ratios` (undefined, ``None``, where the denominator is 0; never
``inf``, ``NaN`` or 0). The chart page below and the *Attribution report* page of the UI plugin
both take their numbers from it.

:func:`write_chart` renders the rows of an exported report into one self-contained HTML file
from a Jinja2 template (autoescaped): inline SVG and CSS, no script, no external resource (a
Content-Security-Policy forbids them), so it opens from disk, from an e-mail attachment or behind
the Airflow UI alike. It links to its CSV (same folder) and, when given, to the report page of its
range. The file is written to a temporary name and renamed into place.

Amounts are in the currency of ``$ATTRIBUTION_CURRENCY`` (an ISO 4217 code, default ``EUR``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from ihc_attribution import settings
from ihc_attribution.export import ReportRow, atomic_write, ratios, round_ihc, round_money

_ZERO = Decimal(0)

SPEND_COLOR = "#8d99ae"
REVENUE_COLOR = "#2a9d8f"
ROAS_COLOR = "#e9c46a"
LOSS_COLOR = "#e76f51"
MAX_LABEL_CHARS = 26

CURRENCY_ENV = "ATTRIBUTION_CURRENCY"
DEFAULT_CURRENCY = "EUR"
_CURRENCY_SYMBOLS = {"EUR": "\u20ac", "USD": "$", "GBP": "\u00a3", "JPY": "\u00a5"}

# The report page inside the Airflow UI: the plugin's view (url_route "attribution-report") with
# the plugin app's own path (mounted at /attribution-report/) after it. Airflow 3.3 loads that
# path, with its query, into the view's frame.
UI_BASE_URL_ENV = "ATTRIBUTION_UI_BASE_URL"
REPORT_PAGE_PATH = "/plugin/attribution-report/attribution-report/"


def currency() -> str:
    """The report currency: ``$ATTRIBUTION_CURRENCY`` (three letters, e.g. ``USD``), default ``EUR``.

    :raises ValueError: for anything that is not a three-letter code.
    """
    code = settings.currency_code()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"{CURRENCY_ENV} must be a three-letter ISO 4217 code such as EUR or USD, not {code!r}")
    return code


def ui_base_url() -> str:
    """Base URL of the Airflow UI, for links written into logs and XCom.

    ``$ATTRIBUTION_UI_BASE_URL`` if set, else Airflow's ``[api] base_url``, else
    ``http://localhost:<[api] port>``.
    """
    base = settings.ui_base_url_override()
    if not base:
        try:
            from airflow.configuration import conf

            base = (conf.get("api", "base_url", fallback="") or "").strip()
            port = conf.get("api", "port", fallback="8080")
        except Exception:  # no Airflow configuration here: a plain local default
            port = "8080"
        base = base or f"http://localhost:{port}"
    return base.rstrip("/")


def report_url(first_date: str, last_date: str, base_url: str | None = None,
               channels: Sequence[str] = ()) -> str:
    """URL of the report page in the Airflow UI for a date range (and optionally channels)."""
    query = [("start", first_date), ("end", last_date), *(("channel", c) for c in channels)]
    base = ui_base_url() if base_url is None else base_url.rstrip("/")
    return f"{base}{REPORT_PAGE_PATH}?{urlencode(query)}"


# --- figures -----------------------------------------------------------------------------------


class Cell(Protocol):
    """A report row as the figures need it: a ``ReportRow``, or unrounded sums of the table."""

    channel_name: str
    date: str
    cost: Decimal
    ihc: Decimal
    ihc_revenue: Decimal


@dataclass(frozen=True)
class ChannelTotals:
    """Sums of report rows (of one channel, one date, or all), unrounded, with their ratios."""

    channel_name: str
    cost: Decimal
    ihc: Decimal
    ihc_revenue: Decimal
    days: int

    @property
    def cpo(self) -> Decimal | None:
        """Cost per attributed order, rounded to the cent; ``None`` without attributed orders."""
        return ratios(self.cost, self.ihc, self.ihc_revenue)[0]

    @property
    def roas(self) -> Decimal | None:
        """Attributed revenue per unit of spend, 4 decimals; ``None`` without spend."""
        return ratios(self.cost, self.ihc, self.ihc_revenue)[1]


@dataclass(frozen=True)
class DayTotals:
    """Spend and attributed revenue of all channels on one date."""

    date: str
    cost: Decimal
    ihc_revenue: Decimal


@dataclass(frozen=True)
class Figures:
    """Everything the report shows for a set of rows.

    ``dates`` are the dates with at least one row, ascending. ``daily[channel]`` is aligned with
    ``dates``: the channel's totals of each date, ``None`` where it has no row (no session).
    """

    dates: tuple[str, ...]
    total: ChannelTotals
    channels: tuple[ChannelTotals, ...]
    per_date: tuple[ChannelTotals, ...]
    daily: dict[str, tuple[ChannelTotals | None, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.dates


def _sum(name: str, rows: Sequence[Cell]) -> ChannelTotals:
    return ChannelTotals(
        channel_name=name,
        cost=sum((r.cost for r in rows), _ZERO),
        ihc=sum((r.ihc for r in rows), _ZERO),
        ihc_revenue=sum((r.ihc_revenue for r in rows), _ZERO),
        days=len({r.date for r in rows}),
    )


def _by_revenue(totals: Iterable[ChannelTotals]) -> list[ChannelTotals]:
    return sorted(totals, key=lambda t: (-t.ihc_revenue, -t.cost, t.channel_name))


def compute_figures(rows: Iterable[Cell]) -> Figures:
    """The figures of ``rows``: the one computation behind every number of the report.

    Sums are exact (Decimal) and rounded only when shown; ratios are ratios of sums, never means
    of daily ratios. Channels are ordered by attributed revenue, then spend (both descending),
    then name.
    """
    rows = list(rows)
    by_channel: dict[str, list[Cell]] = {}
    by_date: dict[str, list[Cell]] = {}
    by_cell: dict[tuple[str, str], list[Cell]] = {}
    for row in rows:
        by_channel.setdefault(row.channel_name, []).append(row)
        by_date.setdefault(row.date, []).append(row)
        by_cell.setdefault((row.channel_name, row.date), []).append(row)
    dates = tuple(sorted(by_date))
    channels = tuple(_by_revenue(_sum(name, channel_rows) for name, channel_rows in by_channel.items()))
    daily = {
        t.channel_name: tuple(
            _sum(t.channel_name, by_cell[(t.channel_name, d)]) if (t.channel_name, d) in by_cell else None
            for d in dates
        )
        for t in channels
    }
    return Figures(
        dates=dates,
        total=_sum("All channels", rows),
        channels=channels,
        per_date=tuple(_sum(d, by_date[d]) for d in dates),
        daily=daily,
    )


def channel_totals(rows: Iterable[Cell]) -> list[ChannelTotals]:
    """Totals per channel, by attributed revenue, then spend (both descending), then name."""
    return list(compute_figures(rows).channels)


def overall_totals(rows: Iterable[Cell]) -> ChannelTotals:
    """Totals of all channels over the range."""
    return compute_figures(rows).total


def daily_totals(rows: Iterable[Cell]) -> list[DayTotals]:
    """Spend and attributed revenue of all channels per date, in date order."""
    return [DayTotals(t.channel_name, t.cost, t.ihc_revenue) for t in compute_figures(rows).per_date]


# --- formatting --------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def money(value: Decimal | None, currency: str = DEFAULT_CURRENCY) -> str:
    """``€1,234.56`` (``CHF 1,234.56`` for a code without a symbol here); ``n/a`` if undefined."""
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""
    symbol = _CURRENCY_SYMBOLS.get(currency, f"{currency}\u00a0")
    return f"{sign}{symbol}{abs(round_money(value)):,}"


def number(value: Decimal | None, places: int = 2) -> str:
    """A number with thousands separators and ``places`` decimals; ``n/a`` if undefined."""
    if value is None:
        return "n/a"
    return f"{value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP):,}"


def plain(value: Decimal | None, kind: str) -> float | None:
    """A figure rounded as shown (``money``: cents; ``ihc``/``roas``: 4 decimals), for charts and JSON."""
    if value is None:
        return None
    return float(round_money(value) if kind == "money" else round_ihc(value))


def _label(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "\u2026"


def _width(value: Decimal, scale: Decimal, full: int) -> float:
    if scale <= 0 or value <= 0:
        return 0.0
    return round(float(value / scale) * full, 1)


# --- SVG ---------------------------------------------------------------------------------------

_LABEL_W, _BAR_W, _VALUE_W = 190, 430, 110
_SVG_W = _LABEL_W + _BAR_W + _VALUE_W


def spend_revenue_svg(totals: Sequence[ChannelTotals], currency: str = DEFAULT_CURRENCY) -> str:
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
        parts.append(f'<g class="channel"><title>{name}: spend {money(t.cost, currency)}, attributed revenue '
                     f'{money(t.ihc_revenue, currency)}</title>')
        parts.append(f'<text x="{_LABEL_W - 8}" y="{y + bar_h + 4}" class="label" text-anchor="end">'
                     f'{_esc(_label(t.channel_name))}</text>')
        for j, (value, color) in enumerate(((t.cost, SPEND_COLOR), (t.ihc_revenue, REVENUE_COLOR))):
            w = _width(value, scale, _BAR_W)
            by = y + j * (bar_h + 2)
            parts.append(f'<rect x="{_LABEL_W}" y="{by}" width="{w}" height="{bar_h}" fill="{color}"/>')
            parts.append(f'<text x="{_LABEL_W + w + 6}" y="{by + bar_h - 2}" class="value">{money(value, currency)}</text>')
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


def daily_svg(days: Sequence[DayTotals], metric: str = "cost", currency: str = DEFAULT_CURRENCY) -> str:
    """A line of one daily amount of all channels (``cost`` or ``ihc_revenue``), on its own axis.

    Spend and attributed revenue get a chart each: on a shared axis the smaller of the two would
    be flattened to the bottom. Empty for fewer than 2 days.
    """
    if len(days) < 2:
        return ""
    label, color = {"cost": ("Spend", SPEND_COLOR), "ihc_revenue": ("Attributed revenue", REVENUE_COLOR)}[metric]
    left, right, top, plot_h = 80, 20, 14, 150
    width, height = _SVG_W, top + plot_h + 34
    plot_w = width - left - right
    values = [getattr(d, metric) for d in days]
    scale = max(values + [_ZERO])
    step = plot_w / (len(days) - 1)

    def xy(i: int, value: Decimal) -> tuple[float, float]:
        y = top + plot_h - (float(value / scale) * plot_h if scale > 0 and value > 0 else 0.0)
        return round(left + i * step, 1), round(y, 1)

    title_id = f"daily-{metric}-title"
    parts = [
        f'<svg class="chart" role="img" aria-labelledby="{title_id}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{title_id}">Daily {label.lower()}, all channels</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>',
        f'<text x="{left - 6}" y="{top + 4}" class="value" text-anchor="end">{money(scale, currency)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" class="value" text-anchor="end">{money(_ZERO, currency)}</text>',
    ]
    points = " ".join("{},{}".format(*xy(i, v)) for i, v in enumerate(values))
    parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2.5"/>')
    every = max(1, round(len(days) / 8))
    for i, (d, v) in enumerate(zip(days, values, strict=True)):
        x, y = xy(i, v)
        parts.append(f'<g><title>{_esc(d.date)}: {label.lower()} {money(v, currency)}</title>'
                     f'<circle cx="{x}" cy="{y}" r="3" fill="{color}"/></g>')
        if (len(days) - 1 - i) % every == 0:  # evenly spaced, always the last date
            parts.append(f'<text x="{left + i * step:.1f}" y="{top + plot_h + 18}" class="value" '
                         f'text-anchor="middle">{_esc(d.date[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- page --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2433;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5c6578;margin:0 0 18px}.links a{margin-right:14px}
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

_TEMPLATE = """\
{%- macro row(t) -%}
<tr><td>{{ t.channel_name }}</td>
{%- for text in [money(t.cost), number(t.ihc), money(t.ihc_revenue), money(t.cpo), number(t.roas)] -%}
<td{% if text == "n/a" %} class="na"{% endif %}>{{ text }}</td>
{%- endfor %}</tr>
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><style>{{ css }}</style></head><body>
<h1>{{ title }}</h1>
<p class="sub">Channel report by session date, {{ span }}: {{ figures.channels | length }} channel(s), \
{{ row_count }} report row(s). Attribution by the IHC model. Amounts in {{ currency }}.</p>
{%- if csv_name or report_url %}
<p class="links">
{%- if csv_name %}<a href="{{ csv_name }}" download>Download the CSV ({{ csv_name }})</a>{% endif %}
{%- if report_url %}<a href="{{ report_url }}">Open the report of this range in Airflow</a>{% endif -%}
</p>
{%- endif %}
{%- if figures.empty %}
<p class="na">No report rows for this range.</p>
{%- else %}
<div class="cards">
{%- for key, value in cards %}<div class="card"><div class="k">{{ key }}</div><div class="v">{{ value }}</div></div>{% endfor -%}
</div>
<h2>Spend and attributed revenue per channel</h2>
{{ spend_revenue }}
<h2>ROAS per channel</h2>
{{ roas }}
{%- if daily_spend %}
<h2>Daily spend, all channels</h2>
{{ daily_spend }}
<h2>Daily attributed revenue, all channels</h2>
{{ daily_revenue }}
{%- endif %}
<h2>Totals per channel</h2>
<table><thead><tr><th>Channel</th><th>Spend</th><th>Attributed orders</th><th>Attributed revenue</th>\
<th>CPO</th><th>ROAS</th></tr></thead><tbody>
{%- for t in figures.channels %}
{{ row(t) }}
{%- endfor %}
</tbody><tfoot>
{{ row(figures.total) }}
</tfoot></table>
<p class="note">ROAS = attributed revenue / spend; CPO = spend / attributed orders; n/a where the \
denominator is 0. Spend counts every session of the channel and date, converting or not.</p>
{%- endif %}
</body></html>
"""

_ENV: Any = None


def jinja_env() -> Any:
    """The Jinja2 environment of the report's pages: autoescaped, undefined names are errors."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return _ENV


def render_chart(
    rows: Sequence[Cell],
    title: str,
    *,
    csv_name: str | None = None,
    report_url: str | None = None,
    currency_code: str | None = None,
) -> str:
    """The whole HTML page for the report rows (see the module docstring)."""
    from markupsafe import Markup

    code = currency_code or currency()
    rows = list(rows)
    figures = compute_figures(rows)
    span = f"{figures.dates[0]} to {figures.dates[-1]}" if figures.dates else "no data"
    total = figures.total
    context: dict[str, Any] = {
        "title": title, "css": Markup(_CSS), "span": span, "figures": figures, "row_count": len(rows),
        "currency": code, "csv_name": csv_name, "report_url": report_url,
        "money": lambda v: money(v, code), "number": number,
        "cards": [
            ("Spend", money(total.cost, code)),
            ("Attributed revenue", money(total.ihc_revenue, code)),
            ("ROAS", number(total.roas)),
            ("Attributed orders", number(total.ihc)),
            ("CPO", money(total.cpo, code)),
        ],
    }
    if not figures.empty:
        # The SVG builders escape every text of the data themselves.
        days = daily_totals(rows)
        context.update(
            spend_revenue=Markup(spend_revenue_svg(figures.channels, code)),
            roas=Markup(roas_svg(figures.channels)),
            daily_spend=Markup(daily_svg(days, "cost", code)),
            daily_revenue=Markup(daily_svg(days, "ihc_revenue", code)),
        )
    return jinja_env().from_string(_TEMPLATE).render(context)


def chart_path(csv_file: Any) -> Any:
    """The chart next to an exported CSV (a path, or an ``ObjectStoragePath``): same name, ``.html``."""
    return (Path(csv_file) if isinstance(csv_file, str) else csv_file).with_suffix(".html")


def write_chart(rows: list[ReportRow], path: Any, title: str, *, csv_name: str | None = None,
                report_url: str | None = None) -> Any:
    """Write the report page for ``rows`` to ``path`` atomically; return ``path``.

    ``csv_name`` (the CSV beside it) and ``report_url`` (the report page of the range) become links.

    The page is built in memory and written with :func:`export.atomic_write` (a temporary file
    renamed over ``path``, or one upload to an object store): readers see the previous complete
    page or the new one, never a part.
    """
    page = render_chart(rows, title, csv_name=csv_name, report_url=report_url)
    path = Path(path) if isinstance(path, str) else path
    with atomic_write(path) as handle:
        handle.write(page)
    return path
