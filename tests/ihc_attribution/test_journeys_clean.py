"""The rows SQLite calls clean pass every Python check, and the shortcut changes no outcome.

The extraction reads into Python, and checks there, only the rows that SQLite cannot tell are
well-formed (``validation.CLEAN_SESSION``, ``validation.CLEAN_CONVERSION``). That is only correct
if clean is never looser than :func:`validation.session_problems` and
:func:`validation.conversion_problems`: a clean row with a problem would be sent unchecked.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ihc_attribution import journeys, schema, validation
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import SESSION_COLUMNS, make_db, source_ddl

pytestmark = pytest.mark.slow  # make test-slow; CI runs both


class InvalidUtf8(bytes):
    """Bytes stored as TEXT: text that is not valid UTF-8, as a CSV import can leave it."""


def _insert(conn: sqlite3.Connection, table: str, rows: list[tuple]) -> None:
    for row in rows:
        marks = ", ".join("CAST(? AS TEXT)" if isinstance(v, InvalidUtf8) else "?" for v in row)
        conn.execute(f"INSERT INTO {table} VALUES ({marks})", [bytes(v) if isinstance(v, InvalidUtf8) else v for v in row])


# Values around every edge of the checks, then anything.
AWKWARD_TEXT = [
    "", " ", "  ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x7f", "\x85", "\xa0", "\u2003", "\u3000", "\x00", "a\x00",
    "\x00a", "a\x00\x00", "Referral", " x ", "~", "!", "a'b", 'a"b', "a\\b", "Ünïcødé", "広告", "a\nb",
    InvalidUtf8(b"\xff"), InvalidUtf8(b"a\xff"), InvalidUtf8(b"\xc3"), InvalidUtf8(b"\xc3A"), InvalidUtf8(b"\x80"),
    InvalidUtf8(b"a\x00\xff"), InvalidUtf8(b"\xed\xa0\x80"), b"Referral", 7, 7.5, None,
]
AWKWARD_DATES = [
    "2024-01-05", "2024-02-29", "2023-02-29", "2024-02-30", "2023-09-31", "2024-13-01", "2024-00-10", "2024-01-00",
    "0000-01-01", "0999-01-01", "1677-09-21", "1899-12-31", "1900-01-01", "2199-12-31", "2200-01-01", "2262-04-12",
    "9999-12-31", "2024-1-05", "2024/01/05", "2024.01.05", " 2024-01-05", "2024-01-05 ", "2024-01-05\x00",
    "2024-01-05\x00x", "2024-01-05T10:00:00", "2024-01-05 10:00:00", "２０２４-０１-０５", "now", "", 20240105, 2024.0,
    b"2024-01-05", InvalidUtf8(b"2024-01-0\xff"), None,
]
AWKWARD_TIMES = [
    "00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "29:00:00", "7:00:00", "07:00", "10:00:00.5",
    " 10:00:00", "10:00:00 ", "10:00:00\x00", "10:00:00Z", "10:00:00+01:00", "１０:00:00", "", 100000, 10.5,
    b"10:00:00", InvalidUtf8(b"10:00:0\xff"), None,
]
AWKWARD_FLAGS = [0, 1, 0.0, 1.0, -0.0, 2, -1, 0.5, True, "0", "1", " 1", b"\x01", None, 1e300]
AWKWARD_REVENUE = [
    0, 0.0, -0.0, 10, 10.5, 1e308, 1.7976931348623157e308, float("inf"), float("-inf"), float("nan"), -1, -1e-300,
    9_223_372_036_854_775_807, "5", "abc", b"5", None,
]


def _text(alphabet=st.characters(codec="utf-8")):
    return st.one_of(
        st.sampled_from(AWKWARD_TEXT),
        st.text(alphabet, max_size=12),
        st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12),
        st.binary(max_size=8).map(InvalidUtf8),
        st.integers(-(2**63), 2**63 - 1),
    )


def _dates():
    return st.one_of(
        st.sampled_from(AWKWARD_DATES),
        st.dates(dt.date(1, 1, 1)).map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}"),
        st.tuples(st.integers(0, 9999), st.integers(0, 19), st.integers(0, 39)).map(lambda t: "%04d-%02d-%02d" % t),
        _text(),
    )


def _times():
    return st.one_of(
        st.sampled_from(AWKWARD_TIMES),
        st.tuples(st.integers(0, 29), st.integers(0, 69), st.integers(0, 69)).map(lambda t: "%02d:%02d:%02d" % t),
        _text(),
    )


def _flags():
    return st.one_of(st.sampled_from(AWKWARD_FLAGS), st.integers(-2, 3), st.floats(allow_nan=False), _text())


def _revenue():
    return st.one_of(st.sampled_from(AWKWARD_REVENUE), st.floats(), st.integers(-(2**63), 2**63 - 1), _text())


def _read(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    db = Database(conn)  # the extraction's reader: text that is not UTF-8 arrives as surrogates
    return db.query(sql)


@settings(max_examples=300)
@given(st.lists(st.tuples(_text(), _dates(), _times(), _text(), _flags(), _flags(), _flags()), min_size=1, max_size=20))
def test_a_clean_session_passes_every_check(rows):
    conn = sqlite3.connect(":memory:")
    conn.executescript(source_ddl(keys=False))
    _insert(conn, "session_sources", [(sid, "u1", d, t, ch, h, c, i) for sid, d, t, ch, h, c, i in rows])
    clean = validation.CLEAN_SESSION["sqlite"]
    got = _read(
        conn,
        f"SELECT {clean}, s.session_id, s.user_id, CAST(s.event_date AS TEXT), CAST(s.event_time AS TEXT), "
        "s.channel_name, s.holder_engagement, s.closer_engagement, s.impression_interaction FROM session_sources s",
    )
    frame = pd.DataFrame([r[1:] for r in got], columns=SESSION_COLUMNS, dtype=object)
    problems = validation.session_problems(frame)
    for (is_clean, *values), problem in zip(got, problems):
        if is_clean:
            assert problem == "", (values, problem)


@settings(max_examples=300)
@given(st.lists(st.tuples(_text(), _text(), _dates(), _times(), _revenue()), min_size=1, max_size=20))
def test_a_clean_conversion_passes_every_check(rows):
    conn = sqlite3.connect(":memory:")
    conn.executescript(source_ddl(keys=False))
    _insert(conn, "conversions", rows)
    clean = validation.CLEAN_CONVERSION["sqlite"]
    got = _read(
        conn,
        f"SELECT {clean}, conv_id, user_id, CAST(conv_date AS TEXT), CAST(conv_time AS TEXT), revenue FROM conversions",
    )
    frame = pd.DataFrame([r[1:] for r in got], columns=["conv_id", "user_id", "conv_date", "conv_time", "revenue"],
                         dtype=object)
    problems = validation.conversion_problems(frame)
    for (is_clean, *values), problem in zip(got, problems):
        if is_clean:
            assert problem == "", (values, problem)


def test_ordinary_rows_are_clean():
    """The shortcut must take the common case, or it only costs time."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(source_ddl())
    _insert(conn, "session_sources", [
        ("s1", "u1", "2024-01-05", "10:00:00", "Paid Search Brand", 1, 0, 0),
        ("00000bedd9eee00a", "u1", "1990-12-31", "23:59:59", "FB & IG Ads", 0, 1, 1),
        ("s3", "u1", "2024-02-29", "00:00:00", "Paid, Search", 1.0, 0.0, 0),
    ])
    _insert(conn, "conversions", [("c1", "u1", "2024-01-10", "10:00:00", 50.0), ("c2", "u2", "2024-01-10", "00:00:00", 0)])
    assert conn.execute(f"SELECT COUNT(*) FROM session_sources s WHERE {validation.CLEAN_SESSION['sqlite']}").fetchone() == (3,)
    assert conn.execute(f"SELECT COUNT(*) FROM conversions WHERE {validation.CLEAN_CONVERSION['sqlite']}").fetchone() == (2,)


# --- the shortcut changes no outcome --------------------------------------------------------------

SESSION_VALUES = st.tuples(
    st.one_of(st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6"]), _text()),
    st.sampled_from(["u1", "u2", "u3"]),
    st.one_of(st.sampled_from(["2024-01-03", "2024-01-05", "2024-01-09", "2024-01-10", "2024-01-12"]), _dates()),
    st.one_of(st.sampled_from(["00:00:00", "09:59:59", "10:00:00", "23:59:59"]), _times()),
    st.one_of(st.sampled_from(["Referral", "Direct Traffic"]), _text()),
    st.one_of(st.sampled_from([0, 1]), _flags()),
    st.one_of(st.sampled_from([0, 1]), _flags()),
    st.one_of(st.sampled_from([0, 1]), _flags()),
)
CONVERSION_VALUES = st.tuples(
    st.one_of(st.sampled_from(["c1", "c2", "c3", "c4"]), _text()),
    st.sampled_from(["u1", "u2", "u3"]),
    st.one_of(st.sampled_from(["2024-01-09", "2024-01-10", "2024-01-11"]), _dates()),
    st.one_of(st.sampled_from(["00:00:00", "10:00:00", "23:59:59"]), _times()),
    st.one_of(st.sampled_from([10.0, 5]), _revenue()),
)


def _staged(path: Path, *, shortcut: bool, lookback_days: int | None) -> tuple:
    saved = dict(validation.CLEAN_SESSION), dict(validation.CLEAN_CONVERSION)
    if not shortcut:  # every row is read and checked in Python
        validation.CLEAN_SESSION["sqlite"] = "0"
        validation.CLEAN_CONVERSION.clear()
    db = Database.connect_sqlite(str(path))
    try:
        schema.ensure_schema(db)
        rng = range_from_params({"start_date": "2024-01-10", "end_date": "2024-01-10"})
        try:
            summary = journeys.extract_journeys(db, "r1", rng, lookback_days=lookback_days).as_dict()
        except sqlite3.Error as exc:  # e.g. two ids that are equal only as text: both ways alike
            summary = type(exc).__name__
        tables = {
            table: sorted(map(repr, db.query(f"SELECT * FROM {table}")))
            for table in ("attribution_stg_conversions", "attribution_stg_sessions", "attribution_stg_issues",
                          "attribution_stg_journey_keys")
        }
    finally:
        db.close()
        validation.CLEAN_SESSION.update(saved[0])
        validation.CLEAN_CONVERSION.update(saved[1])
    return summary, tables


@pytest.mark.parametrize("keys", [True, False])
@settings(max_examples=60)
@given(
    sessions=st.lists(SESSION_VALUES, max_size=12),
    conversions=st.lists(CONVERSION_VALUES, min_size=1, max_size=6),
    lookback_days=st.sampled_from([None, 1, 7]),
)
def test_the_shortcut_stages_what_checking_every_row_in_python_stages(tmp_path_factory, keys, sessions, conversions,
                                                                      lookback_days):
    tmp = tmp_path_factory.mktemp("clean")
    base = tmp / "base.sqlite"
    conn = sqlite3.connect(base)
    conn.executescript(source_ddl(keys=keys))
    for table, rows in (("session_sources", sessions), ("conversions", conversions)):
        for row in rows:
            try:
                _insert(conn, table, [row])
            except sqlite3.IntegrityError:  # a repeated primary key
                pass
    conn.commit()
    conn.close()
    shutil.copy(base, tmp / "checked.sqlite")
    assert _staged(base, shortcut=True, lookback_days=lookback_days) == _staged(
        tmp / "checked.sqlite", shortcut=False, lookback_days=lookback_days
    )


@pytest.mark.parametrize("id_type, session_id", [("TEXT", "s1"), ("INTEGER", 7)])
def test_a_clean_copy_of_a_duplicated_session_still_quarantines(tmp_path, id_type, session_id):
    """Without a primary key a session id may be present twice: a clean row is checked too."""
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[(session_id, "u1", "2024-01-05", "10:00:00", "Referral"),
                  (session_id, "u1", "2024-01-06", "10:00:00", "Referral")],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0)],
        ddl=source_ddl(keys=False, id_type=id_type),
    )
    summary, tables = _staged(path, shortcut=True, lookback_days=None)
    assert summary["invalid_input"] == 1
    assert any("present 2 times in session_sources" in row for row in tables["attribution_stg_issues"])
