"""CSV export: ratios, rounding to the cent, quoting, formula escaping, atomic writes."""

from __future__ import annotations

import csv
import os
import time
from decimal import Decimal

import pytest

from ihc_attribution import export, settings
from ihc_attribution.daterange import range_from_params


@pytest.mark.parametrize(
    ("cost", "ihc", "revenue", "cpo", "roas"),
    [
        (10.0, 2.0, 50.0, Decimal("5.00"), Decimal("5.0000")),
        (0.0, 2.0, 50.0, Decimal("0.00"), None),  # no spend: ROAS undefined
        (10.0, 0.0, 0.0, None, Decimal("0.0000")),  # no orders: CPO undefined
        (0.0, 0.0, 0.0, None, None),
        (2.675, 1.0, 1.005, Decimal("2.68"), Decimal("0.3757")),  # half-up on the decimal value
        (1.0, 3.0, 1.0, Decimal("0.33"), Decimal("1.0000")),
    ],
)
def test_report_row_ratios(cost, ihc, revenue, cpo, roas):
    row = export.report_row("X", "2024-01-01", cost, ihc, revenue)
    assert row.cpo == cpo
    assert row.roas == roas


def test_money_is_rounded_to_the_cent():
    row = export.report_row("X", "2024-01-01", 0.1 + 0.2, 0.33333333, 2.675)
    assert (row.cost, row.ihc, row.ihc_revenue) == (Decimal("0.30"), Decimal("0.3333"), Decimal("2.68"))


AWKWARD = ["Paid, Search", 'Say "hi"', "Ünïcødé Ads", "line\nbreak", "=SUM(A1)", "+1", "-x", "@me", "'q'", "Plain"]


def _written_names(tmp_path, **options) -> list[str]:
    rows = [export.report_row(n, "2024-01-01", 1.0, 0.5, 10.0) for n in AWKWARD]
    path = export.write_csv(rows, tmp_path / "out" / "r.csv", **options)
    with open(path, newline="", encoding="utf-8") as handle:
        read = list(csv.reader(handle))
    assert read[0] == list(export.CSV_COLUMNS)
    assert read[1][2:] == ["1.00", "0.5000", "10.00", "2.00", "10.0000"]
    return [r[0] for r in read[1:]]


def test_csv_holds_channel_names_verbatim_by_default(tmp_path):
    assert _written_names(tmp_path) == AWKWARD


def test_csv_formula_escaping_is_opt_in(tmp_path, monkeypatch):
    escaped = ["'" + n if n[0] in "=+-@" else n for n in AWKWARD]
    assert _written_names(tmp_path, escape_formulas=True) == escaped
    monkeypatch.setenv("ATTRIBUTION_CSV_ESCAPE_FORMULAS", "yes")
    assert settings.get("csv_escape_formulas") is True
    monkeypatch.setenv("ATTRIBUTION_CSV_ESCAPE_FORMULAS", "0")
    assert settings.get("csv_escape_formulas") is False
    monkeypatch.setenv("ATTRIBUTION_CSV_ESCAPE_FORMULAS", "maybe")
    with pytest.raises(ValueError, match="ATTRIBUTION_CSV_ESCAPE_FORMULAS"):
        settings.get("csv_escape_formulas")


def test_csv_writes_invalid_utf8_bytes_back_unchanged(tmp_path):
    raw = b"Bad \xff\xfe Channel"
    name = raw.decode("utf-8", errors="surrogateescape")
    path = export.write_csv([export.report_row(name, "2024-01-01", 1.0, 0.5, 10.0)], tmp_path / "r.csv")
    assert path.read_bytes().splitlines()[1].startswith(raw + b",2024-01-01,")


def test_csv_empty_cells_for_undefined_ratios(tmp_path):
    path = export.write_csv([export.report_row("X", "2024-01-01", 0.0, 0.0, 0.0)], tmp_path / "r.csv")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[1] == "X,2024-01-01,0.00,0.0000,0.00,,"
    assert "inf" not in text.lower() and "nan" not in text.lower()


def test_csv_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "r.csv"
    export.write_csv([export.report_row("old", "2024-01-01", 1.0, 1.0, 1.0)], target)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", boom)
    with pytest.raises(OSError):
        export.write_csv([export.report_row("new", "2024-01-01", 1.0, 1.0, 1.0)], target)
    assert "old" in target.read_text() and "new" not in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"], "no temporary file left behind"


def test_csv_name_uses_inclusive_dates():
    rng = range_from_params({"start_date": "2024-01-01", "end_date": "2024-01-31"})
    assert export.csv_path("out", rng).name == "channel_reporting_2024-01-01_2024-01-31.csv"


def test_leftover_temporary_files_are_cleared(tmp_path):
    target = tmp_path / "r.csv"
    old, fresh = tmp_path / ".r.csv.abc123.tmp", tmp_path / ".r.csv.def456.tmp"
    old.write_text("half a fi")
    fresh.write_text("being writ")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    export.write_csv([export.report_row("X", "2024-01-01", 1.0, 1.0, 1.0)], target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.csv.def456.tmp", "r.csv"]
