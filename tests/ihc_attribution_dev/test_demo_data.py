"""Demo database generator: exact schema, determinism, realistic distributions, safe writes.

The distributions are measured on the written database with SQL of their own (the journey rule
is spelled out again here), not with the generator's helpers, so a generator bug shows up.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from pathlib import Path

import pytest

from ihc_attribution_dev import demo_data, demo_profile
from ihc_attribution_dev.demo_data import DemoConfig, generate, main

DDL_FILE = Path(__file__).resolve().parents[2] / "include" / "ihc_attribution" / "sql" / "challenge_schema.sql"

CHALLENGE_CHANNELS = {
    "Affiliate & Partnerships", "Direct Traffic", "FB & IG Ads", "Lead Generation", "Microsoft Ads",
    "Newsletter & Email", "Organic Traffic", "Paid Search Brand", "Paid Search Non Brand",
    "Performance Max", "Pinterest Ads", "Referral", "Social Organic", "TikTok Ads",
    "Untracked Conversions", "YouTube Ads",
}  # fmt: skip
FREE = {
    "Organic Traffic", "Direct Traffic", "Referral", "Social Organic", "Newsletter & Email",
    "Untracked Conversions",
}  # fmt: skip

START, END = dt.date(2024, 3, 1), dt.date(2024, 3, 14)
CONFIG = DemoConfig(
    start=START, end=END, conversions=3_000, sessions_per_conversion=20, seed=7, lookback_days=45
)

# Journeys: every session of the user strictly before the conversion timestamp.
JOURNEY_SQL = """
    SELECT c.conv_id, s.session_id, s.event_date, s.event_time
    FROM conversions AS c
    JOIN session_sources AS s
      ON s.user_id = c.user_id
     AND s.event_date || ' ' || s.event_time < c.conv_date || ' ' || c.conv_time
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One generated database shared by the read-only tests: (summary, connection)."""
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    summary = generate(path, CONFIG)
    conn = sqlite3.connect(path)
    yield summary, conn
    conn.close()


def scalar(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> object:
    return conn.execute(sql, params).fetchone()[0]


def journey_lengths(conn: sqlite3.Connection) -> dict[str, int]:
    sql = f"""
        SELECT c.conv_id, COUNT(j.session_id)
        FROM conversions AS c
        LEFT JOIN ({JOURNEY_SQL}) AS j ON j.conv_id = c.conv_id
        GROUP BY c.conv_id
    """
    return dict(conn.execute(sql).fetchall())


def dump(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
        tables = [name for (name,) in names]
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    finally:
        conn.close()


# ---------------------------------------------------------------------------- schema


def test_schema_is_exactly_the_challenge_ddl(demo):
    _, conn = demo
    expected = sqlite3.connect(":memory:")
    expected.executescript(DDL_FILE.read_text(encoding="utf-8"))

    def tables(c: sqlite3.Connection) -> dict[str, list[tuple]]:
        names = c.execute("SELECT name FROM main.sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
        return {n: c.execute(f"PRAGMA main.table_info({n})").fetchall() for (n,) in names}

    assert tables(conn) == tables(expected)
    assert set(tables(conn)) == {
        "session_sources",
        "conversions",
        "session_costs",
        "attribution_customer_journey",
        "channel_reporting",
    }


def test_no_indexes_beyond_primary_keys(demo):
    _, conn = demo
    indexes = conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'index'").fetchall()
    assert indexes and all(name.startswith("sqlite_autoindex_") for (name,) in indexes)


def test_result_tables_are_empty(demo):
    _, conn = demo
    assert scalar(conn, "SELECT COUNT(*) FROM attribution_customer_journey") == 0
    assert scalar(conn, "SELECT COUNT(*) FROM channel_reporting") == 0


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_content_other_seed_other_content(tmp_path):
    small = DemoConfig(conversions=150, sessions_per_conversion=15, seed=3)
    generate(tmp_path / "a.db", small)
    generate(tmp_path / "b.db", small)
    generate(tmp_path / "c.db", DemoConfig(conversions=150, sessions_per_conversion=15, seed=4))
    a, b, c = dump(tmp_path / "a.db"), dump(tmp_path / "b.db"), dump(tmp_path / "c.db")
    assert a["session_sources"] and a["conversions"] and a["session_costs"]
    assert a == b
    for table in ("session_sources", "conversions", "session_costs"):
        assert a[table] != c[table]
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()


# ---------------------------------------------------------------------------- sizes and shapes


def test_counts_match_the_summary_and_the_config(demo):
    summary, conn = demo
    sessions = scalar(conn, "SELECT COUNT(*) FROM session_sources")
    assert scalar(conn, "SELECT COUNT(*) FROM conversions") == CONFIG.conversions == summary.conversions
    assert sessions == summary.sessions == round(CONFIG.conversions * CONFIG.sessions_per_conversion)
    assert scalar(conn, "SELECT COUNT(*) FROM session_costs") == summary.cost_rows
    assert scalar(conn, "SELECT COUNT(DISTINCT user_id) FROM session_sources") == summary.users
    assert summary.journey_sessions + summary.post_purchase_sessions + summary.noise_sessions == sessions


def test_ids_are_unique_hex_strings(demo):
    _, conn = demo
    ids = (("session_sources", "session_id"), ("conversions", "conv_id"), ("session_sources", "user_id"))
    for table, column in ids:
        bad = f"typeof({column}) != 'text' OR {column} GLOB '*[^0-9a-f]*' OR length({column}) != 16"
        assert scalar(conn, f"SELECT COUNT(*) FROM {table} WHERE {bad}") == 0
    assert scalar(conn, "SELECT COUNT(*) - COUNT(DISTINCT session_id) FROM session_sources") == 0
    assert scalar(conn, "SELECT COUNT(*) - COUNT(DISTINCT conv_id) FROM conversions") == 0
    orphans = (
        "SELECT COUNT(*) FROM session_costs WHERE session_id NOT IN (SELECT session_id FROM session_sources)"
    )
    assert scalar(conn, orphans) == 0
    # Every buyer also has sessions (the journey of a conversion is never empty), except the
    # conversions without sessions that the bad rows add on purpose.
    no_sessions = (
        "SELECT COUNT(*) FROM conversions WHERE user_id NOT IN (SELECT user_id FROM session_sources)"
    )
    assert scalar(conn, no_sessions) == demo_profile.BAD_ROWS["conversion_without_sessions"]


def test_dates_and_times_are_well_formed(demo):
    _, conn = demo
    impossible = demo_profile.BAD_ROWS["session_impossible_date"]
    for table, d, t in (
        ("session_sources", "event_date", "event_time"),
        ("conversions", "conv_date", "conv_time"),
    ):
        bad = f"""
            SELECT COUNT(*) FROM {table}
            WHERE typeof({d}) != 'text' OR typeof({t}) != 'text'
               OR {d} NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]' OR date({d}) IS NOT {d}
               OR {t} NOT GLOB '[0-9][0-9]:[0-9][0-9]:[0-9][0-9]' OR time({t}) IS NOT {t}
        """
        assert scalar(conn, bad) == (impossible if table == "session_sources" else 0)
    flags = "SELECT COUNT(*) FROM session_sources WHERE {0} NOT IN (0, 1) OR typeof({0}) != 'integer'"
    for column in ("holder_engagement", "closer_engagement", "impression_interaction"):
        assert scalar(conn, flags.format(column)) == 0
        rate = scalar(conn, f"SELECT AVG({column}) FROM session_sources")
        assert 0 < rate < 1


def test_all_conversions_fall_in_the_range(demo):
    _, conn = demo
    low, high = conn.execute("SELECT MIN(conv_date), MAX(conv_date) FROM conversions").fetchone()
    assert START.isoformat() <= low and high <= END.isoformat()
    # Spread over the whole range, not bunched.
    assert scalar(conn, "SELECT COUNT(DISTINCT conv_date) FROM conversions") == (END - START).days + 1


def test_sessions_stay_in_the_window_and_reach_back_before_the_range(demo):
    summary, conn = demo
    window_start = (START - dt.timedelta(days=CONFIG.lookback_days)).isoformat()
    low, high = conn.execute("SELECT MIN(event_date), MAX(event_date) FROM session_sources").fetchone()
    assert window_start <= low and high <= END.isoformat()
    # (the session with the impossible date, day 00, is no day at all)
    before = scalar(conn, "SELECT COUNT(*) FROM session_sources WHERE event_date < ? AND event_date NOT LIKE '%-00'",
                    (START.isoformat(),))
    assert before == summary.sessions_before_start > 0
    # Traffic of users who never convert is spread evenly over the lookback and the range.
    noise = "FROM session_sources WHERE user_id NOT IN (SELECT user_id FROM conversions)"
    noise_before = scalar(conn, f"SELECT COUNT(*) {noise} AND event_date < ?", (START.isoformat(),))
    assert noise_before / scalar(conn, f"SELECT COUNT(*) {noise}") == pytest.approx(45 / 59, abs=0.03)
    # Journeys of conversions in the range start before it, some weeks before.
    firsts = conn.execute(f"SELECT MIN(event_date) FROM ({JOURNEY_SQL}) GROUP BY conv_id").fetchall()
    early = [d for (d,) in firsts if d < START.isoformat()]
    assert len(early) > 0.01 * CONFIG.conversions
    assert min(early) <= (START - dt.timedelta(days=14)).isoformat()


def test_times_are_spread_over_the_day(demo):
    _, conn = demo
    per_hour = dict(conn.execute("SELECT substr(event_time, 1, 2), COUNT(*) FROM session_sources GROUP BY 1"))
    assert len(per_hour) == 24
    # Busy daytime, quiet small hours.
    assert per_hour["10"] > 2 * per_hour["04"]


# ---------------------------------------------------------------------------- journeys


def test_journey_length_shares(demo):
    _, conn = demo
    lengths = list(journey_lengths(conn).values())
    n = len(lengths)
    assert n == CONFIG.conversions
    assert sum(1 for x in lengths if x == 0) == demo_profile.BAD_ROWS["conversion_without_sessions"]
    lengths = [x for x in lengths if x > 0]
    n = len(lengths)
    share = {k: sum(1 for x in lengths if x == k) / n for k in (1, 2, 3)}
    assert share[1] == pytest.approx(0.58, abs=0.04)
    assert share[2] == pytest.approx(0.21, abs=0.03)
    assert share[3] == pytest.approx(0.10, abs=0.03)
    assert sum(1 for x in lengths if x >= 30) >= 1  # the long tail exists ...
    assert sum(1 for x in lengths if x >= 30) <= 0.01 * n  # ... and stays a tail


def test_most_sessions_belong_to_users_who_never_convert(demo):
    _, conn = demo
    noise = scalar(
        conn, "SELECT COUNT(*) FROM session_sources WHERE user_id NOT IN (SELECT user_id FROM conversions)"
    )
    in_journeys = scalar(conn, f"SELECT COUNT(DISTINCT session_id) FROM ({JOURNEY_SQL})")
    total = scalar(conn, "SELECT COUNT(*) FROM session_sources")
    assert noise / total > 0.8
    assert in_journeys / total < 0.2


def test_repeat_buyers_have_overlapping_journeys(demo):
    _, conn = demo
    per_user = dict(conn.execute("SELECT user_id, COUNT(*) FROM conversions GROUP BY user_id").fetchall())
    repeat = sum(1 for n in per_user.values() if n > 1)
    assert 0.03 * len(per_user) < repeat < 0.25 * len(per_user)
    assert max(per_user.values()) <= 3
    # A session before a repeat buyer's first order belongs to every one of their journeys.
    shared = f"SELECT session_id FROM ({JOURNEY_SQL}) GROUP BY session_id HAVING COUNT(*) > 1"
    assert scalar(conn, f"SELECT COUNT(*) FROM ({shared})") > 0


def test_no_session_at_the_exact_time_of_its_users_conversion(demo):
    _, conn = demo
    ties = """
        SELECT COUNT(*) FROM conversions AS c JOIN session_sources AS s
          ON s.user_id = c.user_id AND s.event_date = c.conv_date AND s.event_time = c.conv_time
    """
    assert scalar(conn, ties) == 0


def test_gaps_within_journeys_mix_minutes_and_days(demo):
    _, conn = demo
    rows = conn.execute(
        f"SELECT conv_id, julianday(event_date || ' ' || event_time) FROM ({JOURNEY_SQL}) ORDER BY 1, 2"
    ).fetchall()
    gaps = [(b[1] - a[1]) * 24 * 60 for a, b in itertools.pairwise(rows) if a[0] == b[0]]
    short = sum(1 for g in gaps if g < 30) / len(gaps)
    long = sum(1 for g in gaps if g > 24 * 60) / len(gaps)
    assert 0.2 < short < 0.7
    assert 0.1 < long < 0.5


# ---------------------------------------------------------------------------- channels, costs, revenue


def test_channels_are_the_sixteen_of_the_challenge(demo):
    _, conn = demo
    shares = dict(conn.execute("SELECT channel_name, COUNT(*) FROM session_sources GROUP BY 1"))
    assert shares.pop("") == demo_profile.BAD_ROWS["session_empty_channel"]  # the bad row, on purpose
    assert set(shares) == CHALLENGE_CHANNELS
    total = sum(shares.values())
    # The big three of real traffic are each a sizeable share; no channel dominates.
    for big in ("Organic Traffic", "Direct Traffic", "Performance Max"):
        assert 0.08 < shares[big] / total < 0.35


def test_free_channels_cost_nothing_paid_channels_cost_something(demo):
    _, conn = demo
    per_channel = conn.execute(
        """
        SELECT s.channel_name, MIN(c.cost), MAX(c.cost), AVG(c.cost)
        FROM session_sources AS s JOIN session_costs AS c USING (session_id)
        WHERE c.cost IS NOT NULL AND s.channel_name != '' GROUP BY 1
        """
    ).fetchall()
    assert {row[0] for row in per_channel} == CHALLENGE_CHANNELS
    for name, low, high, mean in per_channel:
        if name in FREE:
            assert (low, high) == (0, 0), name
        else:
            assert low > 0, name
            assert 0.2 <= mean <= 3.0, name
            assert high <= 10, name


def test_some_costs_are_null_and_some_sessions_have_no_cost_row(demo):
    _, conn = demo
    total = scalar(conn, "SELECT COUNT(*) FROM session_sources")
    nulls = scalar(conn, "SELECT COUNT(*) FROM session_costs WHERE cost IS NULL")
    missing = scalar(
        conn,
        "SELECT COUNT(*) FROM session_sources WHERE session_id NOT IN (SELECT session_id FROM session_costs)",
    )
    assert 0.002 < nulls / total < 0.05
    assert 0.005 < missing / total < 0.05


def test_revenue_is_positive_with_cents_and_mean_near_57(demo):
    _, conn = demo
    mean, low, high = conn.execute(
        "SELECT AVG(revenue), MIN(revenue), MAX(revenue) FROM conversions"
    ).fetchone()
    assert mean == pytest.approx(57, rel=0.08)
    assert low > 0 and high < 2_000
    assert scalar(conn, "SELECT COUNT(*) FROM conversions WHERE revenue != round(revenue, 2)") == 0
    # Skewed like real order values: the median sits below the mean.
    values = sorted(v for (v,) in conn.execute("SELECT revenue FROM conversions"))
    assert values[len(values) // 2] < mean


# ---------------------------------------------------------------------------- options


def test_users_option_sets_the_number_of_distinct_users(tmp_path):
    summary = generate(tmp_path / "u.db", DemoConfig(conversions=100, sessions_per_conversion=10, users=400))
    conn = sqlite3.connect(tmp_path / "u.db")
    assert scalar(conn, "SELECT COUNT(DISTINCT user_id) FROM session_sources") == 400 == summary.users


@pytest.mark.parametrize(
    "config",
    [
        DemoConfig(start=dt.date(2024, 1, 2), end=dt.date(2024, 1, 1)),
        DemoConfig(conversions=0),
        DemoConfig(sessions_per_conversion=0.5),
        DemoConfig(lookback_days=-1),
        DemoConfig(conversions=100, sessions_per_conversion=10, users=5),  # fewer users than buyers
    ],
)
def test_invalid_configurations_are_refused(tmp_path, config):
    with pytest.raises(ValueError):
        generate(tmp_path / "x.db", config)
    assert list(tmp_path.iterdir()) == []


def test_a_one_day_range_without_lookback_keeps_every_session_inside(tmp_path):
    day = dt.date(2024, 5, 5)
    generate(
        tmp_path / "d.db",
        DemoConfig(start=day, end=day, lookback_days=0, conversions=200, sessions_per_conversion=5),
    )
    conn = sqlite3.connect(tmp_path / "d.db")
    dates = "SELECT DISTINCT event_date FROM session_sources WHERE event_date NOT LIKE '%-00'"
    assert conn.execute(dates).fetchall() == [(day.isoformat(),)]
    empty = f"SELECT COUNT(*) FROM conversions WHERE conv_id NOT IN (SELECT conv_id FROM ({JOURNEY_SQL}))"
    assert scalar(conn, empty) == demo_profile.BAD_ROWS["conversion_without_sessions"]


# ---------------------------------------------------------------------------- writing


def test_existing_file_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "demo.db"
    path.write_bytes(b"precious")
    small = DemoConfig(conversions=50, sessions_per_conversion=5)
    with pytest.raises(FileExistsError):
        generate(path, small)
    assert path.read_bytes() == b"precious"

    generate(path, small, overwrite=True)
    assert scalar(sqlite3.connect(path), "SELECT COUNT(*) FROM conversions") == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.db"]  # no temporary file left


def test_a_failed_build_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "demo.db"
    path.write_bytes(b"previous")

    def crash(tmp: Path, tables) -> None:
        tmp.write_bytes(b"half a database")
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_data, "write_database", crash)
    with pytest.raises(RuntimeError):
        generate(path, DemoConfig(conversions=20, sessions_per_conversion=5), overwrite=True)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.db"]


def test_command_line(tmp_path, capsys):
    path = tmp_path / "sub" / "cli.db"
    args = ["--out", str(path), "--start", "2024-02-01", "--end", "2024-02-03", "--conversions", "40",
            "--sessions-per-conversion", "12", "--seed", "5", "--lookback-days", "10"]  # fmt: skip
    assert main(args) == 0
    assert "sessions" in capsys.readouterr().out
    conn = sqlite3.connect(path)
    assert scalar(conn, "SELECT COUNT(*) FROM session_sources") == 480
    low, high = conn.execute("SELECT MIN(conv_date), MAX(conv_date) FROM conversions").fetchone()
    assert low >= "2024-02-01" and high <= "2024-02-03"
    assert scalar(conn, "SELECT MIN(event_date) FROM session_sources") >= "2024-01-22"
    conn.close()

    assert main(args) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--seed", "6", "--overwrite"]) == 0


# ---------------------------------------------------------------------------- bad rows


def test_bad_rows_are_few_documented_and_each_in_a_journey_of_its_own(demo):
    summary, conn = demo
    kinds = demo_profile.BAD_ROWS
    assert summary.conversions_without_sessions == kinds["conversion_without_sessions"]
    assert summary.malformed_sessions == kinds["session_impossible_date"] + kinds["session_empty_channel"]
    sessionless = [c for c, n in journey_lengths(conn).items() if n == 0]
    assert len(sessionless) == kinds["conversion_without_sessions"]
    # The malformed sessions: day 00 of a month, or an empty channel name.
    bad_sessions = conn.execute(
        "SELECT session_id, user_id, event_date, channel_name FROM session_sources "
        "WHERE event_date LIKE '%-00' OR channel_name = ''"
    ).fetchall()
    assert sorted(1 if d.endswith("-00") else 2 for _, _, d, _ in bad_sessions) == (
        [1] * kinds["session_impossible_date"] + [2] * kinds["session_empty_channel"])
    # Each lies in the journey of a conversion (before it), of a buyer with that one conversion.
    hit = set()
    for _session, user_id, date, _ in bad_sessions:
        convs = conn.execute("SELECT conv_id, conv_date FROM conversions WHERE user_id = ?", (user_id,)).fetchall()
        assert len(convs) == 1
        ((conv_id, conv_date),) = convs
        assert date[:8] + "01" <= conv_date
        hit.add(conv_id)
    assert len(hit) == len(bad_sessions) and not hit & set(sessionless)
    assert len(hit) + len(sessionless) <= 0.01 * CONFIG.conversions


def test_bad_rows_can_be_left_out(tmp_path):
    config = DemoConfig(conversions=300, sessions_per_conversion=10, seed=5, bad_rows=False)
    summary = generate(tmp_path / "clean.db", config)
    conn = sqlite3.connect(tmp_path / "clean.db")
    assert summary.conversions_without_sessions == summary.malformed_sessions == 0
    assert min(journey_lengths(conn).values()) >= 1
    assert scalar(conn, "SELECT COUNT(*) FROM session_sources WHERE event_date LIKE '%-00' OR channel_name = ''") == 0
