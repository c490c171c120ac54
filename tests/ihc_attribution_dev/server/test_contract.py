"""The compute_ihc contract over real HTTP: bodies, status codes, rounding, limits."""

from __future__ import annotations

import json
import random

import pytest
import requests

from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution_dev.server.helpers import KEY, journey, post, row, units

TWO_SESSIONS = journey("c1", ["2024-01-01 10:00:00", "2024-01-01 12:00:00"])


def test_200_body_shape_and_values(base_url):
    rows = journey("c1", ["2024-01-01 10:00:00", "2024-01-01 10:05:00", "2024-01-01 10:10:00"],
                   ["Paid Search Brand", "Organic Traffic", "Performance Max"],
                   holder_engagement=[1, 1, 1], closer_engagement=[0, 0, 1])
    r = post(base_url, {"customer_journeys": rows})
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["statusCode", "value", "partialFailureErrors"]
    assert body["statusCode"] == 200 and body["partialFailureErrors"] == []
    assert [list(v) for v in body["value"]] == [
        ["conversion_id", "session_id", "initializer", "holder", "closer", "ihc"]
    ] * 3
    values = {v["session_id"]: v for v in body["value"]}
    assert values["c1-s0"]["initializer"] == 1.0
    assert values["c1-s2"]["closer"] == 1.0
    assert [values[f"c1-s{i}"]["holder"] for i in range(3)] == pytest.approx([0.1666, 0.6668, 0.1666], abs=0.01)


def test_every_answer_says_it_is_the_local_double(base_url):
    answers = [
        post(base_url, {"customer_journeys": TWO_SESSIONS}),
        post(base_url, {"customer_journeys": TWO_SESSIONS}, key=None),
        requests.get(base_url + "/health"),
        requests.get(base_url + "/stats"),
        requests.get(base_url + "/no/such/path"),
        requests.get(base_url + "/openapi.json"),
    ]
    assert [a.headers.get("X-IHC-Local-Double") for a in answers] == ["true"] * len(answers)
    assert answers[2].json() == {"status": "ok", "local_double": True}


def test_openapi_documents_the_endpoint(base_url):
    spec = requests.get(base_url + "/openapi.json").json()
    operation = spec["paths"]["/v1/compute_ihc"]["post"]
    assert "customer_journeys" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "206", "400", "403", "404", "413", "429"} <= set(operation["responses"])


def test_ids_keep_their_type_and_rows_their_order(base_url):
    rows = [row(7, 3, "2024-01-01 12:00:00", conversion=1), row(7, 1, "2024-01-01 10:00:00"), row("7", "a")]
    body = post(base_url, {"customer_journeys": rows}).json()
    assert [(v["conversion_id"], v["session_id"]) for v in body["value"]] == [(7, 3), (7, 1), ("7", "a")]
    assert body["value"][2]["ihc"] == 1.0  # "7" is a journey of its own


@pytest.mark.parametrize("seed", range(5))
def test_rounding_4_decimals_and_exact_sums_per_journey(base_url, seed):
    rng = random.Random(seed)
    rows = []
    for c in range(rng.randint(5, 20)):
        n = rng.randint(1, 12)
        stamps = sorted(
            f"2024-01-{rng.randint(1, 12):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00" for _ in range(n)
        )
        rows += journey(f"c{c}", stamps, [rng.choice(["Direct Traffic", "Referral", "New"]) for _ in range(n)],
                        holder_engagement=[rng.randint(0, 1) for _ in range(n)],
                        closer_engagement=[rng.randint(0, 1) for _ in range(n)])
    rng.shuffle(rows)  # the rows of a journey need not be adjacent
    body = post(base_url, {"customer_journeys": rows}).json()
    assert body["statusCode"] == 200 and len(body["value"]) == len(rows)
    sums: dict[str, dict[str, int]] = {}
    for v in body["value"]:
        per = sums.setdefault(v["conversion_id"], {"initializer": 0, "holder": 0, "closer": 0, "ihc": 0})
        for column in per:
            per[column] += units(v[column])  # also fails on a 5th decimal
    for conv_id, per in sums.items():
        assert (per["initializer"], per["closer"], per["ihc"]) == (10_000, 10_000, 10_000), conv_id
        assert per["holder"] in (0, 10_000), conv_id


def test_each_request_is_normalised_on_its_own(base_url):
    stamps = ["2024-01-01 10:00:00", "2024-01-02 10:00:00", "2024-01-04 10:00:00", "2024-01-06 10:00:00"]
    rows = journey("split", stamps, ["Referral", "Direct Traffic", "Performance Max", "Direct Traffic"])
    whole = post(base_url, {"customer_journeys": rows}).json()["value"]
    first = post(base_url, {"customer_journeys": rows[:2]}).json()["value"]
    second = post(base_url, {"customer_journeys": rows[2:]}).json()["value"]
    assert sum(units(v["ihc"]) for v in whole) == 10_000
    assert sum(units(v["ihc"]) for v in first) == 10_000
    assert sum(units(v["ihc"]) for v in first + second) == 20_000  # as the real service: sums to 2
    # and the halves are not the whole journey's answer
    assert [v["ihc"] for v in first] != [v["ihc"] for v in whole[:2]]


@pytest.mark.parametrize(
    "bad_row,expected_in_message",
    [
        (row("bad", "b1", timestamp=None), "missing timestamp"),
        (row("bad", "b1", channel_label=None, closer_engagement=None), "missing channel_label, closer_engagement"),
        (row("bad", "b1", timestamp="2024-01-01T10:00:00"), "timestamp '2024-01-01T10:00:00' does not match"),
        (row("bad", "b1", holder_engagement=2), "holder_engagement must be 0 or 1, got 2"),
        (row("bad", "b1", conversion="1"), "conversion must be 0 or 1, got '1'"),
        (row("bad", "b1", impression_interaction=True), "impression_interaction must be 0 or 1, got True"),
        (row("bad", "b1", closer_engagement=1.0), "closer_engagement must be 0 or 1, got 1.0"),
        (row("bad", "b1", channel_label=""), "channel_label must be a non-empty string"),
        (row("bad", "", ), "session_id must be a non-empty string or an integer"),
        (row("bad", "s-dup"), "session_id 's-dup' repeats customer_journeys["),
    ],
)
def test_206_partial_failure_for_a_journey_with_an_invalid_row(base_url, bad_row, expected_in_message):
    good = journey("good", ["2024-01-01 10:00:00", "2024-01-01 11:00:00"])
    bad_journey = [row("bad", "s-dup", "2024-01-01 09:00:00"), bad_row]
    r = post(base_url, {"customer_journeys": [*good, *bad_journey]})
    assert r.status_code == 206
    body = r.json()
    assert body["statusCode"] == 206
    assert [v["conversion_id"] for v in body["value"]] == ["good", "good"]  # no rows for "bad"
    assert sum(units(v["ihc"]) for v in body["value"]) == 10_000
    (failure,) = body["partialFailureErrors"]
    assert list(failure) == ["conversion_id", "message"]
    assert failure["conversion_id"] == "bad"
    assert expected_in_message in failure["message"]
    assert "customer_journeys[3]" in failure["message"]  # points at the row


def test_206_when_every_journey_fails(base_url):
    r = post(base_url, {"customer_journeys": [row("x", holder_engagement=5), row("y", timestamp="yesterday")]})
    assert r.status_code == 206
    body = r.json()
    assert body["value"] == []
    assert sorted(f["conversion_id"] for f in body["partialFailureErrors"]) == ["x", "y"]


def _body(rows: list[dict], **extra) -> bytes:
    return json.dumps({"customer_journeys": rows, **extra}).encode()


@pytest.mark.parametrize(
    "raw,expected_in_message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object, got array"),
        (b'{"journeys": []}', "needs 'customer_journeys'"),
        (b'{"customer_journeys": {"a": 1}}', "needs 'customer_journeys'"),
        (b'{"customer_journeys": []}', "is empty"),
        (b'{"customer_journeys": [1]}', "customer_journeys[0] must be an object, got number"),
        (_body([row(), row(conversion_id=None)]), "customer_journeys[1].conversion_id is missing"),
        (_body([row(conversion_id=1.5)]), "conversion_id must be a non-empty string or an integer"),
        (_body([row()], redistribution_parameter={"closer": {"direction": "up"}}),
         "redistribution_parameter.closer: missing"),
    ],
)
def test_400_malformed_body(base_url, raw, expected_in_message):
    r = post(base_url, None, raw=raw)
    assert r.status_code == 400
    body = r.json()
    assert (body["statusCode"], body["error"]) == (400, "Bad Request")
    assert expected_in_message in body["message"]


def test_400_without_conv_type_id(base_url):
    r = post(base_url, {"customer_journeys": TWO_SESSIONS}, conv_type_id=None)
    assert r.status_code == 400
    assert "conv_type_id" in r.json()["message"]


def test_redistribution_parameter_is_applied(base_url):
    rows = journey("r", ["2024-01-01 10:00:00", "2024-01-01 11:00:00"], ["Referral", "Direct Traffic"])
    rule = {"closer": {"direction": "earlier_sessions_only", "receive_threshold": 0,
                       "redistribution_channel_labels": ["Direct Traffic"]}}
    body = post(base_url, {"customer_journeys": rows, "redistribution_parameter": rule}).json()
    assert [v["closer"] for v in body["value"]] == [1.0, 0.0]


@pytest.mark.parametrize("key,message", [(None, "missing x-api-key header"), ("", "missing x-api-key header"),
                                         ("wrong", "invalid API key"), (KEY + "x", "invalid API key")])
def test_403_missing_or_wrong_key(base_url, key, message):
    r = post(base_url, {"customer_journeys": TWO_SESSIONS}, key=key)
    assert r.status_code == 403
    assert r.json() == {"statusCode": 403, "error": "Forbidden", "message": message}
    assert KEY not in r.text


def test_every_configured_key_and_conv_type_is_accepted(base_url):
    assert post(base_url, {"customer_journeys": TWO_SESSIONS}, key="test-key-2").status_code == 200
    assert post(base_url, {"customer_journeys": TWO_SESSIONS}, conv_type_id="other").status_code == 200


def test_404_unknown_conv_type_id(base_url):
    r = post(base_url, {"customer_journeys": TWO_SESSIONS}, conv_type_id="purchase")
    assert r.status_code == 404
    body = r.json()
    assert body["statusCode"] == 404
    assert "unknown conv_type_id 'purchase'" in body["message"]


def _journeys(n_journeys: int, sessions_each: int) -> list[dict]:
    rows = []
    for c in range(n_journeys):
        rows += journey(f"c{c}", [f"2024-01-01 {h // 60:02d}:{h % 60:02d}:00" for h in range(sessions_each)])
    return rows


@pytest.mark.parametrize(
    "n_journeys,sessions_each,status,over",
    [
        (100, 30, 200, None),  # exactly at both limits
        (101, 1, 413, "101 journeys (limit 100)"),
        (1, 3001, 413, "3001 sessions (limit 3000)"),  # one journey over the session limit
        (100, 31, 413, "3100 sessions (limit 3000)"),
        (101, 30, 413, "101 journeys (limit 100) and 3030 sessions (limit 3000)"),
    ],
)
def test_413_over_a_limit_rejects_the_whole_request(base_url, n_journeys, sessions_each, status, over):
    r = post(base_url, {"customer_journeys": _journeys(n_journeys, sessions_each)})
    assert r.status_code == status
    if status == 200:
        assert len(r.json()["value"]) == n_journeys * sessions_each
        return
    body = r.json()
    assert body["statusCode"] == 413 and "value" not in body
    assert over in body["message"]
    assert body["limits"] == {"max_journeys": 100, "max_sessions": 3000}
    assert body["counts"] == {"journeys": n_journeys, "sessions": n_journeys * sessions_each}


def test_free_profile_and_configured_limits():
    free = ServerConfig(api_keys=(KEY,), profile="free")
    custom = ServerConfig(api_keys=(KEY,), max_journeys=2, max_sessions=5)
    with serve(free) as url:
        assert post(url, {"customer_journeys": _journeys(10, 20)}).status_code == 200
        r = post(url, {"customer_journeys": _journeys(67, 3)})
        assert r.status_code == 413
        assert r.json()["counts"] == {"journeys": 67, "sessions": 201}
        assert r.json()["limits"] == {"max_journeys": 100, "max_sessions": 200}
    with serve(custom) as url:
        assert post(url, {"customer_journeys": _journeys(2, 2)}).status_code == 200
        assert post(url, {"customer_journeys": _journeys(3, 1)}).status_code == 413
        assert post(url, {"customer_journeys": _journeys(1, 6)}).status_code == 413


def test_stats_count_requests_by_status():
    with serve(ServerConfig(api_keys=(KEY,))) as url:
        post(url, {"customer_journeys": TWO_SESSIONS})
        post(url, {"customer_journeys": [*TWO_SESSIONS, row("bad", timestamp="x")]})
        post(url, {"customer_journeys": TWO_SESSIONS}, key="nope")
        post(url, {"customer_journeys": TWO_SESSIONS}, conv_type_id="nope")
        post(url, None, raw=b"{")
        requests.get(url + "/health")  # not counted
        stats = requests.get(url + "/stats").json()
    assert stats == {
        "requests": 5,
        "by_status": {"200": 1, "206": 1, "400": 1, "403": 1, "404": 1},
        "in_flight": 0,
        "max_in_flight": 1,
        "journeys": 2,
        "sessions": 4,
        "failed_journeys": 1,
    }
