"""Stage 7: export the report of the run's dates as CSV, with CPO and ROAS.

``CPO = cost / ihc`` and ``ROAS = ihc_revenue / cost``, an empty cell where the denominator is 0;
money half-up to the cent, ``ihc`` and ``ROAS`` to 4 decimals. Files go to a local folder or a URL
(``s3://`` ... through Airflow's ``ObjectStoragePath``), written whole: readers see the previous
complete file or the new one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TextIO

from ihc_attribution.daterange import RunRange
from ihc_attribution.db import BYTE_ORDER, Database

STALE_TMP_SECONDS = 600
CSV_COLUMNS = ("channel_name", "date", "cost", "ihc", "ihc_revenue", "CPO", "ROAS")
_CENT = Decimal("0.01")
_FOUR = Decimal("0.0001")
# Spreadsheets run a cell starting with one of these as a formula (CSV injection).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ReportRow:
    """One row of the exported report, ratios included (None where undefined)."""

    channel_name: str
    date: str
    cost: Decimal
    ihc: Decimal
    ihc_revenue: Decimal
    cpo: Decimal | None
    roas: Decimal | None


def round_money(value: Decimal) -> Decimal:
    """Half-up to the cent, as every amount of the report (and CPO) is shown."""
    return value.quantize(_CENT, ROUND_HALF_UP)


def round_ihc(value: Decimal) -> Decimal:
    """Half-up to 4 decimals, as attributed orders (and ROAS) are shown."""
    return value.quantize(_FOUR, ROUND_HALF_UP)


def ratios(cost: Decimal, ihc: Decimal, ihc_revenue: Decimal) -> tuple[Decimal | None, Decimal | None]:
    """``(CPO, ROAS)`` of unrounded sums, ``None`` where the denominator is 0 (never ``inf``, ``NaN`` or 0);
    every report takes its ratios here."""
    return (round_money(cost / ihc) if ihc != 0 else None, round_ihc(ihc_revenue / cost) if cost != 0 else None)


def report_row(channel_name: str, date: str, cost: float, ihc: float, ihc_revenue: float) -> ReportRow:
    """Round one ``channel_reporting`` row and add its ratios (of the unrounded values).

    NULL is 0; repr() gives the shortest decimal that round-trips, so 2.675 stays 2.675 and rounds up.
    """
    c, i, r = (Decimal(repr(float(value or 0))) for value in (cost, ihc, ihc_revenue))
    return ReportRow(channel_name, str(date), round_money(c), round_ihc(i), round_money(r), *ratios(c, i, r))


@dataclass(frozen=True)
class Totals:
    """Sums of report rows, as the CSV's columns add up."""

    cost: Decimal
    ihc: Decimal
    ihc_revenue: Decimal


def report_totals(rows: Iterable[ReportRow]) -> Totals:
    """The totals of ``rows``: exact sums, the same in any order and wherever they are shown."""
    rows = list(rows)
    return Totals(sum((r.cost for r in rows), Decimal(0)), sum((r.ihc for r in rows), Decimal(0)),
                  sum((r.ihc_revenue for r in rows), Decimal(0)))


def read_report(db: Database, run_range: RunRange) -> list[ReportRow]:
    """The report rows of the range's dates, ordered by date and channel."""
    rows = db.query(
        "SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting "
        f"WHERE date >= ? AND date <= ? ORDER BY date, channel_name{BYTE_ORDER[db.dialect]}",
        (run_range.first_date.isoformat(), run_range.last_date.isoformat()),
    )
    return [report_row(*row) for row in rows]


def output_base(location: str, conn_id: str | None = None) -> Any:
    """The output base as an ``ObjectStoragePath``: a URL (``s3://bucket/prefix`` ...), or a local folder
    (from the working directory) as ``file://``; ``conn_id`` is the store's Airflow connection."""
    from airflow.sdk import ObjectStoragePath

    if "://" not in location:
        location = f"file://{Path(location).expanduser().resolve()}"
    return ObjectStoragePath(location, conn_id=conn_id)


def is_local(path: Any) -> bool:
    """Whether ``path`` (a ``Path`` or an ``ObjectStoragePath``) is on the local filesystem."""
    return isinstance(path, Path) or getattr(path, "protocol", None) in ("file", "local")


@contextlib.contextmanager
def atomic_write(path: Any) -> Iterator[TextIO]:
    """Open a text file that replaces ``path`` only once complete, so readers see the old file or the new one.

    Locally: a temporary file in the same folder, synced and renamed over ``path``. On an object
    store: the content in memory, uploaded in one request. On an error ``path`` is left as it was.
    """
    if not is_local(path):
        buffer = io.StringIO(newline="")
        yield buffer
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue().encode("utf-8", errors="surrogateescape"))
        return
    path = path if isinstance(path, Path) else Path(path.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A write killed before the rename leaves its temporary file: clear old leftovers (not one
    # a concurrent writer may be filling right now).
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if time.time() - stale.stat().st_mtime > STALE_TMP_SECONDS:
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # surrogateescape writes bytes that are not valid UTF-8 back exactly as the database holds them.
        with os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Opt-in columns: their names, their values per (channel, date), and the values of a cell without any.
Extra = tuple[tuple[str, ...], dict[tuple[str, str], tuple[Any, ...]], tuple[Any, ...]]


def write_rows(
    handle: TextIO, rows: Iterable[ReportRow], *, escape_formulas: bool = False, extra: Extra | None = None
) -> None:
    """Write the header and the rows as CSV: the one format of every report CSV; ``extra`` columns after them.

    With ``escape_formulas`` a channel name a spreadsheet would run as a formula gets an apostrophe.
    Off by default: the CSV is the report's data, read by other programs through the asset, and must
    hold the names as stored. Turn it on (``$ATTRIBUTION_CSV_ESCAPE_FORMULAS``) only when the files
    are opened in spreadsheets by people who do not control the channel names.
    """
    names, values, zeros = extra or ((), {}, ())
    writer = csv.writer(handle, lineterminator="\n")  # None is written as an empty cell
    writer.writerow(CSV_COLUMNS + names)
    for row in rows:
        name = row.channel_name
        if escape_formulas and name.startswith(_FORMULA_PREFIXES):
            name = "'" + name
        cells = [name, row.date, row.cost, row.ihc, row.ihc_revenue, row.cpo, row.roas]
        writer.writerow(cells + list(values.get((row.channel_name, row.date), zeros)))


def write_csv(rows: list[ReportRow], path: Any, *, escape_formulas: bool = False, extra: Extra | None = None) -> Any:
    """Write the rows to ``path`` atomically (see :func:`atomic_write`); return ``path``."""
    with atomic_write(path) as handle:
        write_rows(handle, rows, escape_formulas=escape_formulas, extra=extra)
    return path


def csv_path(output_dir: Any, run_range: RunRange) -> Any:
    """``<output_dir>/channel_reporting_<first date>_<last date>.csv`` (a ``Path`` or ``ObjectStoragePath``)."""
    base = Path(output_dir) if isinstance(output_dir, str) else output_dir
    return base / f"channel_reporting_{run_range.label}.csv"
