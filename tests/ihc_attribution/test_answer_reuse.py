"""Answers are reused across runs for identical journeys, so a fresh run sends only what was never answered."""

from __future__ import annotations

import sqlite3

import pytest

from ihc_attribution import api_stage, journeys, load, report, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from ihc_attribution.ihc.errors import IhcRetriesExhaustedError
from tests.helpers import FakeIhcClient, expected_report, random_db, read_table, run_pipeline

START, END = "2024-01-01", "2024-01-10"


def _tables(path):
    with sqlite3.connect(path) as conn:
        return [
            conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("attribution_customer_journey", "channel_reporting")
        ]


def _journeys_sent(client: FakeIhcClient) -> int:
    return sum(len({r["conversion_id"] for r in request.rows}) for request in client.sent)


def _run(db_path, run_id, client, *, scope="api-1", reuse=True, max_journeys=3):
    db = Database.connect_sqlite(str(db_path))
    rng = range_from_params({"start_date": START, "end_date": END})
    try:
        schema.ensure_schema(db)
        journeys.extract_journeys(db, run_id, rng, answer_scope=scope, reuse_answers=reuse)
        api_stage.pack_requests(db, run_id, max_journeys=max_journeys, max_sessions=3000)
        api_stage.send_requests(db, run_id, client, max_sessions=3000)
        load.load_attribution(db, run_id, rng)
        report.build_report(db, run_id, rng)
    finally:
        db.close()


@pytest.fixture
def db_path(tmp_path):
    return random_db(tmp_path / "db.sqlite", seed=3)


def test_a_second_run_of_the_same_range_sends_nothing_and_leaves_the_same_tables(db_path):
    first = FakeIhcClient()
    _run(db_path, "run-1", first)
    before = _tables(db_path)
    assert _journeys_sent(first) > 10

    second = FakeIhcClient()
    _run(db_path, "run-2", second)
    assert second.sent == [], "every journey was answered before"
    assert _tables(db_path) == before


def test_a_fresh_run_after_a_crash_sends_only_the_unanswered_journeys(db_path, tmp_path):
    reference = tmp_path / "reference.sqlite"
    reference.write_bytes(db_path.read_bytes())
    everything = FakeIhcClient()
    _run(reference, "ref", everything)

    crashed = FakeIhcClient(fail_after=2)
    with pytest.raises(IhcRetriesExhaustedError):
        _run(db_path, "run-1", crashed)
    answered = _journeys_sent(crashed)
    assert 0 < answered < _journeys_sent(everything)

    retry = FakeIhcClient()
    _run(db_path, "run-2", retry)
    assert _journeys_sent(retry) == _journeys_sent(everything) - answered, "no journey is paid for twice"
    assert _tables(db_path) == _tables(reference)


@pytest.mark.parametrize("change", ["another API scope", "reuse turned off"])
def test_answers_are_not_reused_for_another_api_or_when_turned_off(db_path, change):
    first = FakeIhcClient()
    _run(db_path, "run-1", first)
    second = FakeIhcClient()
    if change == "reuse turned off":
        _run(db_path, "run-2", second, reuse=False)
    else:
        _run(db_path, "run-2", second, scope="api-2")
    assert _journeys_sent(second) == _journeys_sent(first)


def test_a_changed_journey_is_sent_again(db_path):
    first = FakeIhcClient()
    _run(db_path, "run-1", first)
    with sqlite3.connect(db_path) as conn:
        conv_id, user_id = conn.execute("SELECT conv_id, user_id FROM conversions ORDER BY conv_id LIMIT 1").fetchone()
        conn.execute(
            "INSERT INTO session_sources VALUES ('new-session', ?, '2023-12-01', '10:00:00', 'Referral', 1, 1, 0)",
            (user_id,),
        )
        affected = conn.execute(
            "SELECT COUNT(*) FROM conversions WHERE user_id = ? AND conv_date >= ? AND conv_date <= ?",
            (user_id, START, END),
        ).fetchone()[0]
    second = FakeIhcClient()
    _run(db_path, "run-2", second)
    assert _journeys_sent(second) == affected >= 1
    sent = {r["session_id"] for request in second.sent for r in request.rows}
    assert "new-session" in sent


def test_reused_answers_leave_a_report_equal_to_the_recomputation(db_path):
    run_pipeline(db_path, "warm", START, END)
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM attribution_customer_journey")
        conn.execute("DELETE FROM channel_reporting")
    summary = run_pipeline(db_path, "again", START, END)
    assert summary.requests == 0, "all answers came from the first run"
    report_table = read_table(db_path, "channel_reporting").set_index(["channel_name", "date"]).sort_index()
    expected = expected_report(db_path).set_index(["channel_name", "date"]).sort_index()
    expected = expected.loc[report_table.index]
    assert report_table["ihc"].sum() > 0
    for column in ("cost", "ihc", "ihc_revenue"):
        assert (report_table[column] - expected[column]).abs().max() < 1e-9, column


def test_the_answer_scope_is_the_service_not_its_port():
    from types import SimpleNamespace

    from ihc_attribution.tasks import answer_scope

    def scope(url, conv="demo", redistribution=None):
        return answer_scope(SimpleNamespace(base_url=url, conv_type_id=conv, redistribution_parameter=redistribution))

    assert scope("http://127.0.0.1:40001") == scope("http://127.0.0.1:40002"), "the local server's port changes per run"
    assert scope("https://api.ihc-attribution.com") != scope("http://127.0.0.1:40001")
    assert scope("http://127.0.0.1:40001", conv="A") != scope("http://127.0.0.1:40001", conv="B")
    assert scope("http://h", redistribution={"holder": {"direction": "any_session"}}) != scope("http://h")


def test_answers_are_reused_per_account_told_apart_by_a_digest_of_the_key():
    from ihc_attribution.ihc.client import IhcClient
    from ihc_attribution.tasks import answer_scope

    def client(key):
        return IhcClient("http://127.0.0.1:40001", key, "demo")

    first, same, other = client("key-of-account-a-0001"), client("key-of-account-a-0001"), client("key-of-account-b-0002")
    assert first.account_digest == same.account_digest != other.account_digest
    scopes = {answer_scope(c.settings, c.account_digest) for c in (first, same, other)}
    assert len(scopes) == 2
    assert not any("key-of-account" in s for s in scopes), "the scope is stored: it never holds the key"
