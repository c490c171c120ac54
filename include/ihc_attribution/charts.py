"""The report's figures, computed once, and the chart file written next to each CSV.

:func:`compute_figures` sums report rows, rounded as the CSV holds them, into every number the
report shows, so each total is the sum of a CSV column to the cent; ratios are those of
:func:`ihc_attribution.export.ratios` (``None`` where undefined). :func:`write_chart` renders them
into one self-contained HTML file (inline SVG and CSS, no script, nothing loaded from elsewhere)
with the templates and drawings of the report page. Amounts are in ``$ATTRIBUTION_CURRENCY``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ihc_attribution import settings
from ihc_attribution.export import ReportRow, atomic_write, ratios, round_money

_ZERO = Decimal(0)

_CURRENCY_SYMBOLS = {"EUR": "\u20ac", "USD": "$", "GBP": "\u00a3", "JPY": "\u00a5"}
TOTAL_LABEL = "All channels"

# The report page inside the Airflow UI: the plugin's view (url_route "attribution-report") with
# the plugin app's own path (mounted at /attribution-report/) after it. Airflow 3.3 loads that
# path, with its query, into the view's frame.
REPORT_PAGE_PATH = "/plugin/attribution-report/attribution-report/"
TEMPLATE_DIR = Path(__file__).resolve().parent / "report_ui" / "templates"
STYLESHEET = Path(__file__).resolve().parent / "report_ui" / "static" / "report.css"


def currency() -> str:
    """The report currency: ``$ATTRIBUTION_CURRENCY``, default ``EUR``; ValueError unless three capital letters."""
    code = settings.get("currency").upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"ATTRIBUTION_CURRENCY must be a three-letter ISO 4217 code such as EUR or USD, not {code!r}")
    return code


def ui_base_url() -> str:
    """Base URL of the Airflow UI for links in logs and XCom: ``$ATTRIBUTION_UI_BASE_URL``, else
    Airflow's ``[api] base_url``, else ``http://localhost:<[api] port>``."""
    base = settings.get("ui_base_url")
    if not base:
        from airflow.configuration import conf

        base = (conf.get("api", "base_url", fallback="") or "").strip()
        base = base or f"http://localhost:{conf.get('api', 'port', fallback='8080')}"
    return base.rstrip("/")


def report_url(first_date: str, last_date: str) -> str:
    """URL of the report page in the Airflow UI for a date range."""
    return f"{ui_base_url()}{REPORT_PAGE_PATH}?{urlencode({'start': first_date, 'end': last_date})}"


# --- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelTotals:
    """Sums of report rows (of one channel, one date, or all), with their ratios."""

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
class Figures:
    """Everything the report shows for a set of rows: ``dates`` with a row, ascending; ``daily[channel]``
    aligned with them, ``None`` where the channel has no row (no session)."""

    dates: tuple[str, ...]
    total: ChannelTotals
    channels: tuple[ChannelTotals, ...]
    per_date: tuple[ChannelTotals, ...]
    daily: dict[str, tuple[ChannelTotals | None, ...]]


def _sum(name: str, items: Sequence[ReportRow | ChannelTotals], days: int) -> ChannelTotals:
    cost, ihc, revenue = (sum((getattr(i, f) for i in items), _ZERO) for f in ("cost", "ihc", "ihc_revenue"))
    return ChannelTotals(name, cost, ihc, revenue, days)


def _rows_total(name: str, rows: Sequence[ReportRow]) -> ChannelTotals:
    return _sum(name, rows, len({r.date for r in rows}))


def combine(name: str, totals: Iterable[ChannelTotals | None]) -> ChannelTotals | None:
    """The sum of several totals of one date under ``name`` (``None`` if there is none)."""
    present = [t for t in totals if t is not None]
    return _sum(name, present, 1) if present else None


def compute_figures(rows: Iterable[ReportRow]) -> Figures:
    """The one computation behind every number of the report: exact sums of ``rows`` (the totals of
    :func:`ihc_attribution.export.report_totals`), ratios of sums, never means of daily ratios; channels
    by attributed revenue, then spend (both descending), then name."""
    rows = list(rows)
    by_channel: dict[str, list[ReportRow]] = {}
    by_date: dict[str, list[ReportRow]] = {}
    by_cell: dict[tuple[str, str], list[ReportRow]] = {}
    for row in rows:
        by_channel.setdefault(row.channel_name, []).append(row)
        by_date.setdefault(row.date, []).append(row)
        by_cell.setdefault((row.channel_name, row.date), []).append(row)
    dates = tuple(sorted(by_date))
    channels = sorted((_rows_total(name, channel_rows) for name, channel_rows in by_channel.items()),
                      key=lambda t: (-t.ihc_revenue, -t.cost, t.channel_name))
    daily = {t.channel_name: tuple(_rows_total(t.channel_name, by_cell[t.channel_name, d])
                                   if (t.channel_name, d) in by_cell else None for d in dates)
             for t in channels}
    per_date = tuple(_rows_total(d, by_date[d]) for d in dates)
    return Figures(dates, _rows_total(TOTAL_LABEL, rows), tuple(channels), per_date, daily)


# --- formatting --------------------------------------------------------------------------------


def channel_label(name: str) -> str:
    """How a channel is named on every page, chart and legend: its name, or ``(empty name)``."""
    return name if name != "" else "(empty name)"


def currency_symbol(currency: str = "EUR") -> str:
    """What stands before an amount: ``€`` for EUR, ``CHF`` and a no-break space for a code without a symbol here."""
    return _CURRENCY_SYMBOLS.get(currency, f"{currency}\u00a0")


def money(value: Decimal | None, currency: str = "EUR") -> str:
    """``€1,234.56`` (``CHF 1,234.56`` for a code without a symbol here); ``n/a`` if undefined."""
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""
    return f"{sign}{currency_symbol(currency)}{abs(round_money(value)):,}"


def number(value: Decimal | None, places: int = 2) -> str:
    """A number with thousands separators and ``places`` decimals; ``n/a`` if undefined."""
    if value is None:
        return "n/a"
    return f"{value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP):,}"


# --- the chart file ----------------------------------------------------------------------------


@functools.cache
def template_env() -> Any:
    """The Jinja2 environment of the chart file and the UI's pages: autoescaped, undefined names
    are errors, with the filters ``label`` (:func:`channel_label`) and ``number``."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(label=channel_label, number=number)
    return env


def render_chart(rows: Sequence[ReportRow], title: str, *, csv_name: str | None = None,
                 report_url: str | None = None) -> str:
    """The chart file's HTML for the report rows; ``csv_name`` and ``report_url`` become links."""
    from markupsafe import Markup

    from ihc_attribution.report_ui import svg

    code = currency()
    figures = compute_figures(rows)
    colors = svg.channel_colors(t.channel_name for t in figures.channels)
    return template_env().get_template("chart.html.j2").render(
        title=title, css=Markup(STYLESHEET.read_text(encoding="utf-8")), figures=figures, row_count=len(rows),
        currency=code, csv_name=csv_name, report_url=report_url, money=lambda v: money(v, code),
        charts=svg.report_charts(figures, colors, code),
    )


def chart_path(csv_file: Any) -> Any:
    """The chart next to an exported CSV (a path, or an ``ObjectStoragePath``): same name, ``.html``."""
    return csv_file.with_suffix(".html")


def write_chart(rows: list[ReportRow], path: Any, title: str, *, csv_name: str | None = None,
                report_url: str | None = None) -> Any:
    """Write :func:`render_chart`'s page to ``path`` atomically (see :func:`export.atomic_write`); return ``path``."""
    page = render_chart(rows, title, csv_name=csv_name, report_url=report_url)
    with atomic_write(path) as handle:
        handle.write(page)
    return path
