"""IhcClient against real local HTTP servers, with waits turned off.

Answers that break the contract, trickle or explode come from a scripted stub (the local IHC
double keeps the contract to the letter, so it cannot produce them); the rest also from the
project's local IHC double. TLS settings are tried against an HTTPS server with a private CA.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests as requests_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ihc_attribution.errors import PermanentError
from ihc_attribution.ihc.answers import IhcRequest, IhcResult, IhcRow, PartialFailure
from ihc_attribution.ihc.client import IhcClient, parse_retry_after
from ihc_attribution.ihc.errors import (
    IhcConfigurationError,
    IhcContractError,
    IhcError,
    IhcRetriesExhaustedError,
)
from ihc_attribution.ihc.settings import Redactor
from ihc_attribution_dev.server.config import FaultConfig, ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution.ihc_stub import Call, Reply, closed_port, ihc_answer, ok, stub_server

API_KEY = "test-key-5f1c2b9e"


def rows(conv_id: str, n: int) -> list[dict]:
    """Request rows of one journey of n sessions (the last one converting)."""
    return [
        {
            "conversion_id": conv_id,
            "session_id": f"{conv_id}-s{i}",
            "timestamp": f"2024-01-01 10:{i:02d}:00",
            "channel_label": "Direct Traffic",
            "holder_engagement": 1,
            "closer_engagement": 0,
            "conversion": int(i == n - 1),
            "impression_interaction": 0,
        }
        for i in range(n)
    ]


def request(request_id: str | int = "r1", journeys: dict[str, int] | None = None) -> IhcRequest:
    journeys = journeys or {"c1": 2, "c2": 1}
    return IhcRequest(request_id, [row for conv, n in journeys.items() for row in rows(conv, n)])


class SleepRecorder:
    """Injected sleep: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_client(url: str, sleep: SleepRecorder | None = None, **options) -> IhcClient:
    options.setdefault("timeout", 5.0)
    return IhcClient(url, API_KEY, "demo", sleep=sleep or SleepRecorder(), **options)


def sequence(*replies):
    """Responder giving the replies in order, then valid answers; a callable reply gets the call."""
    pending = list(replies)
    lock = threading.Lock()

    def responder(call: Call) -> Reply:
        with lock:
            reply = pending.pop(0) if pending else None
        if reply is None:
            return ok(call)
        return reply(call) if callable(reply) else reply

    return responder


def collect(client: IhcClient, requests) -> tuple[list[IhcResult], object]:
    results: list[IhcResult] = []
    summary = client.compute_ihc(requests, results.append)
    return results, summary


# --- success -----------------------------------------------------------------------------------


def test_success_sends_contract_request_and_returns_typed_rows():
    with stub_server() as stub:
        client = make_client(stub.url)
        results, summary = collect(client, [request("r1", {"c1": 2, "c2": 1})])

    (call,) = stub.calls
    assert call.path == "/v1/compute_ihc"
    assert call.query == {"conv_type_id": ["demo"]}
    assert call.headers["x-api-key"] == API_KEY
    assert set(call.body) == {"customer_journeys"}  # redistribution_parameter omitted when None
    assert len(call.body["customer_journeys"]) == 3

    (result,) = results
    assert result.request_id == "r1"
    assert result.status_code == 200
    assert result.attempts == 1
    assert result.failed == []
    assert sorted(result.rows, key=lambda r: r.session_id) == [
        IhcRow("c1", "c1-s0", 0.5, 0.5, 0.5, 0.5),
        IhcRow("c1", "c1-s1", 0.5, 0.5, 0.5, 0.5),
        IhcRow("c2", "c2-s0", 1.0, 1.0, 1.0, 1.0),
    ]
    assert summary.requests_sent == summary.requests_answered == 1
    assert summary.rows == 3 and summary.retries == 0 and summary.requests_failed == 0


def test_redistribution_parameter_is_sent_when_set():
    parameter = {
        "initializer": {
            "direction": "earlier_sessions_only",
            "receive_threshold": 0,
            "redistribution_channel_labels": ["Direct Traffic"],
        }
    }
    with stub_server() as stub:
        collect(make_client(stub.url, redistribution_parameter=parameter), [request()])
    assert stub.calls[0].body["redistribution_parameter"] == parameter


def test_ids_keep_the_types_sent_even_if_the_answer_has_strings():
    def stringify(call: Call) -> Reply:
        body = ihc_answer(call.body)
        for row in body["value"]:
            row["conversion_id"], row["session_id"] = str(row["conversion_id"]), str(row["session_id"])
        return Reply(200, body)

    req = IhcRequest(7, [dict(r, conversion_id=101, session_id=1000 + i) for i, r in enumerate(rows("x", 2))])
    with stub_server(stringify) as stub:
        (result,), _ = collect(make_client(stub.url), [req])
    assert {(r.conversion_id, r.session_id) for r in result.rows} == {(101, 1000), (101, 1001)}


def test_base_url_may_already_end_with_the_endpoint():
    assert IhcClient("https://h.example/v1/compute_ihc/", "k", "demo").url == "https://h.example/v1/compute_ihc"
    assert IhcClient("https://h.example/", "k", "demo").url == "https://h.example/v1/compute_ihc"


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (("h.example", "k", "demo"), {}),
        (("ftp://h.example", "k", "demo"), {}),
        (("https://h.example", "", "demo"), {}),
        (("https://h.example", "k", ""), {}),
        (("https://h.example", "k", "demo"), {"timeout": 0}),
        (("https://h.example", "k", "demo"), {"max_concurrency": 0}),
        (("https://h.example", "k", "demo"), {"max_retries": -1}),
        (("https://h.example", "k", "demo"), {"backoff_max": -1}),
        (("https://h.example", "k", "demo"), {"max_rejected_share": 0}),
        (("https://h.example", " \n", "demo"), {}),
        (("https://h.example", "k\ney", "demo"), {}),
        (("https://h.example", "k ey", "demo"), {}),
        (("https://h.example", "k\x00", "demo"), {}),
    ],
)
def test_constructor_rejects_bad_arguments(args, options):
    with pytest.raises(IhcConfigurationError):
        IhcClient(*args, **options)


# --- retries -----------------------------------------------------------------------------------


def test_429_with_retry_after_seconds_is_honoured():
    sleep = SleepRecorder()
    with stub_server(sequence(Reply(429, {"message": "slow down"}, {"Retry-After": "7"}))) as stub:
        (result,), summary = collect(make_client(stub.url, sleep), [request()])
    assert sleep.calls == [7.0]
    assert result.attempts == 2
    assert summary.retries == 1 and summary.attempts == 2
    assert len(stub.calls) == 2


def test_retry_after_http_date_is_honoured_and_capped_by_backoff_max():
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    sleep = SleepRecorder()
    replies = [Reply(429, {}, {"Retry-After": soon}), Reply(429, {}, {"Retry-After": "3600"})]
    with stub_server(sequence(*replies)) as stub:
        collect(make_client(stub.url, sleep, backoff_max=60.0), [request()])
    assert 25.0 <= sleep.calls[0] <= 30.0
    assert sleep.calls[1] == 60.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("12", 12.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: retry now
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value, expected):
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_transient_5xx_is_retried_with_jittered_backoff(status):
    sleep = SleepRecorder()
    with stub_server(sequence(Reply(status, {}), Reply(status, {}), Reply(status, {}))) as stub:
        (result,), summary = collect(make_client(stub.url, sleep, backoff_base=1.0, backoff_max=3.0), [request()])
    assert result.attempts == 4 and summary.retries == 3 and len(stub.calls) == 4
    # Full jitter: uniform in [0, min(backoff_max, base * 2 ** (retry - 1))].
    for delay, cap in zip(sleep.calls, [1.0, 2.0, 3.0], strict=True):
        assert 0.0 <= delay <= cap


def test_backoff_is_random_not_fixed():
    sleep = SleepRecorder()
    client = make_client(f"http://127.0.0.1:{closed_port()}", sleep, max_retries=30, backoff_base=10.0,
                         backoff_max=40.0)
    with pytest.raises(IhcRetriesExhaustedError):
        client.send_one(request())
    assert len(sleep.calls) == 30 and len(set(sleep.calls)) > 25
    assert all(0.0 <= delay <= 40.0 for delay in sleep.calls) and max(sleep.calls) > 10.0


def test_status_code_in_body_of_http_200_is_retried_when_transient():
    with stub_server(sequence(Reply(200, {"statusCode": 503, "message": "busy"}))) as stub:
        (result,), _ = collect(make_client(stub.url), [request()])
    assert result.attempts == 2 and len(stub.calls) == 2


def test_read_timeout_is_retried():
    sleep = SleepRecorder()
    with stub_server(sequence(lambda call: Reply(200, ihc_answer(call.body), delay=1.0))) as stub:
        start = time.monotonic()
        (result,), summary = collect(make_client(stub.url, sleep, timeout=0.2), [request()])
    assert result.attempts == 2 and summary.retries == 1
    assert len(sleep.calls) == 1
    assert time.monotonic() - start < 5


def test_connection_refused_exhausts_retries():
    sleep = SleepRecorder()
    client = make_client(f"http://127.0.0.1:{closed_port()}", sleep, max_retries=3)
    results: list[IhcResult] = []
    with pytest.raises(IhcRetriesExhaustedError) as info:
        client.compute_ihc([request("only")], results.append)
    assert info.value.request_ids == ["only"]
    assert "ConnectionError" in info.value.last_errors["only"]
    assert len(sleep.calls) == 3
    assert info.value.summary.retries == 3
    assert results == []


def test_send_one_raises_when_retries_are_exhausted():
    with stub_server(lambda call: Reply(503, {})) as stub:
        with pytest.raises(IhcRetriesExhaustedError):
            make_client(stub.url, max_retries=2).send_one(request())
    assert len(stub.calls) == 3


# --- fatal answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, "malformed"),
        (401, "password"),
        (403, "password"),
        (404, "conv_type_id"),
        (413, "max_sessions_per_request"),
        (422, "not retried"),
    ],
)
def test_client_errors_are_fatal_and_never_retried(status, hint):
    sleep = SleepRecorder()
    with stub_server(lambda call: Reply(status, {"message": "nope"})) as stub:
        with pytest.raises(IhcConfigurationError) as info:
            collect(make_client(stub.url, sleep), [request()])
    assert len(stub.calls) == 1
    assert sleep.calls == []
    assert info.value.status_code == status
    assert hint in str(info.value)
    assert "nope" in str(info.value)  # the service's own message is kept


def test_non_transient_5xx_is_not_retried():
    with stub_server(lambda call: Reply(501, {})) as stub:
        with pytest.raises(IhcError):
            collect(make_client(stub.url), [request()])
    assert len(stub.calls) == 1


def test_redirect_is_not_followed():
    with stub_server() as target:
        with stub_server(lambda call: Reply(302, {}, {"Location": target.url + "/v1/compute_ihc"})) as stub:
            with pytest.raises(IhcConfigurationError, match="redirect"):
                collect(make_client(stub.url), [request()])
    assert target.calls == []  # the key was not forwarded anywhere


def test_fatal_answer_stops_submitting_at_once():
    pulled = []

    def many():
        for i in range(200):
            pulled.append(i)
            yield request(i)

    with stub_server(lambda call: Reply(403, {"message": "Forbidden"}, delay=0.02)) as stub:
        with pytest.raises(IhcConfigurationError):
            make_client(stub.url, max_concurrency=4).compute_ihc(many(), lambda result: None)
    assert len(pulled) <= 4
    assert len(stub.calls) <= 4


# --- answer validation -------------------------------------------------------------------------


def test_partial_failure_is_reported_and_kept():
    def partial(call: Call) -> Reply:
        return Reply(200, ihc_answer(call.body, fail={"c2": "journey too short"}))

    with stub_server(partial) as stub:
        (result,), summary = collect(make_client(stub.url), [request("r", {"c1": 2, "c2": 1, "c3": 3})])
    assert result.status_code == 206
    assert result.failed == [PartialFailure("c2", "journey too short")]
    assert {row.conversion_id for row in result.rows} == {"c1", "c3"}
    assert len(result.rows) == 5
    assert summary.journeys_rejected == 1 and summary.journeys_answered == 3


def _mutated(mutate):
    def responder(call: Call) -> Reply:
        body = ihc_answer(call.body)
        mutate(body)
        return Reply(200, body)

    return responder


def _bump(body):
    body["value"][0]["ihc"] += 0.01


BAD_ANSWERS = {
    "duplicate session": lambda body: body["value"].append(dict(body["value"][0])),
    "missing session": lambda body: body["value"].pop(),
    "unknown session": lambda body: body["value"].append(dict(body["value"][0], session_id="zzz")),
    "unknown conversion": lambda body: body["value"].append(dict(body["value"][0], conversion_id="zzz")),
    "sum not 1": _bump,
    "value not a list": lambda body: body.update(value={"a": 1}),
    "non-numeric ihc": lambda body: body["value"][0].update(ihc="0.5"),
    "statusCode 201": lambda body: body.update(statusCode=201),
    "failure for unknown journey": lambda body: body.update(
        partialFailureErrors=[{"conversion_id": "nope", "message": "x"}]
    ),
    "rows for failed journey": lambda body: body.update(
        statusCode=206, partialFailureErrors=[{"conversion_id": "c2", "message": "x"}]
    ),
    "failure without id": lambda body: body.update(partialFailureErrors=["broken"]),
}


@pytest.mark.parametrize("mutate", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_answers_breaking_the_contract_are_fatal(mutate):
    with stub_server(_mutated(mutate)) as stub:
        with pytest.raises(IhcContractError, match="invalid answer"):
            collect(make_client(stub.url), [request("r", {"c1": 2, "c2": 1})])
    assert len(stub.calls) == 1


def test_answer_that_is_not_json_is_fatal():
    with stub_server(lambda call: Reply(200, raw=b"<html>gateway</html>")) as stub:
        with pytest.raises(IhcContractError, match="not JSON"):
            collect(make_client(stub.url), [request()])


def test_sum_within_tolerance_is_accepted():
    def nearly(body):
        body["value"][0]["ihc"] += 5e-7

    with stub_server(_mutated(nearly)) as stub:
        (result,), _ = collect(make_client(stub.url), [request()])
    assert len(result.rows) == 3


@pytest.mark.parametrize(
    "req",
    [
        IhcRequest("empty", []),
        IhcRequest("dup", rows("c1", 2) + rows("c1", 1)),
        IhcRequest("noid", [{"conversion_id": "c1"}]),
    ],
    ids=["no rows", "duplicate session", "row without session_id"],
)
def test_malformed_requests_are_rejected_before_sending(req):
    with stub_server() as stub:
        with pytest.raises(ValueError):
            collect(make_client(stub.url), [req])
    assert stub.calls == []


def test_duplicate_request_ids_are_rejected():
    with stub_server() as stub:
        with pytest.raises(ValueError, match="duplicate request id"):
            collect(make_client(stub.url, max_concurrency=1), [request("a"), request("a")])


# --- concurrency, laziness, delivery -----------------------------------------------------------


def test_concurrency_bound_lazy_consumption_and_delivery_in_calling_thread():
    caller = threading.get_ident()
    pulled: list[int] = []
    delivered: list[IhcResult] = []
    progress = []

    def generate():
        for i in range(12):
            pulled.append(i)
            yield request(i, {f"c{i}": 2})

    def on_result(result: IhcResult) -> None:
        assert threading.get_ident() == caller
        # Never more than max_concurrency requests read ahead of the answers delivered.
        assert len(pulled) <= len(delivered) + 1 + 3
        delivered.append(result)

    with stub_server(lambda call: Reply(200, ihc_answer(call.body), delay=0.05)) as stub:
        summary = make_client(stub.url, max_concurrency=3).compute_ihc(
            generate(), on_result, progress=progress.append, total=12
        )
    assert stub.max_in_flight == 3
    assert sorted(r.request_id for r in delivered) == list(range(12))
    assert summary.requests_answered == 12 and summary.rows == 24
    assert [p.done for p in progress] == list(range(1, 13))
    assert {p.total for p in progress} == {12}



def _calls_reach(stub, n: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while len(stub.calls) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_request_built_ahead_goes_out_while_the_answers_are_stored():
    # When the k-th answer is delivered, k - 1 were delivered before and at most max_concurrency
    # requests were sent since: k - 1 + max_concurrency in all if nothing goes out before
    # delivery. One request goes out before the answers that came in are delivered, so the k-th
    # delivery sees k + max_concurrency.
    concurrency, early = 2, []

    def on_result(result: IhcResult) -> None:
        k = len(early) + 1
        early.append(not any(early) and _calls_reach(stub, k + concurrency, timeout=0.3))

    with stub_server(lambda call: Reply(200, ihc_answer(call.body), delay=0.05)) as stub:
        make_client(stub.url, max_concurrency=concurrency).compute_ihc(
            [request(i, {f"c{i}": 1}) for i in range(1, 9)], on_result
        )
    assert len(early) == 8 and any(early)


def test_with_one_request_at_a_time_nothing_goes_out_before_the_answer_is_stored():
    calls_at_delivery = []

    def on_result(result: IhcResult) -> None:
        time.sleep(0.05)  # a worker that had been given the next request would have sent it by now
        calls_at_delivery.append(len(stub.calls))

    with stub_server() as stub:
        make_client(stub.url, max_concurrency=1).compute_ihc([request(i, {f"c{i}": 1}) for i in range(1, 5)], on_result)
    assert calls_at_delivery == [1, 2, 3, 4]

def test_total_defaults_to_len_of_a_sized_iterable():
    progress = []
    with stub_server() as stub:
        make_client(stub.url).compute_ihc([request(1), request(2)], lambda r: None, progress=progress.append)
    assert [p.total for p in progress] == [2, 2]


def test_exhausted_retries_deliver_in_flight_answers_then_raise():
    sleep = SleepRecorder()

    def responder(call: Call) -> Reply:
        if "bad" in call.conversion_ids:
            return Reply(503, {})
        return Reply(200, ihc_answer(call.body), delay=0.2)

    requests = [request("r0", {"c0": 1}), request("r1", {"bad": 1})] + [
        request(f"r{i}", {f"c{i}": 1}) for i in range(2, 20)
    ]
    delivered: list[IhcResult] = []
    with stub_server(responder) as stub:
        client = make_client(stub.url, sleep, max_concurrency=3, max_retries=2)
        with pytest.raises(IhcRetriesExhaustedError) as info:
            client.compute_ihc(requests, delivered.append)
    error = info.value
    assert "r1" in error.request_ids
    assert error.last_errors["r1"] == "HTTP 503"
    delivered_ids = {r.request_id for r in delivered}
    # Requests in flight when r1 gave up were answered and delivered, not dropped.
    assert "r0" in delivered_ids
    assert delivered_ids | set(error.request_ids) == {f"r{i}" for i in range(error.summary.requests_sent)}
    assert error.summary.requests_sent < 20  # nothing new was sent after the failure
    assert error.summary.requests_answered == len(delivered)
    assert error.summary.retries >= 2


def test_exception_in_on_result_stops_the_run():
    def boom(result: IhcResult) -> None:
        raise RuntimeError("disk full")

    with stub_server() as stub:
        with pytest.raises(RuntimeError, match="disk full"):
            make_client(stub.url, max_concurrency=2).compute_ihc((request(i) for i in range(50)), boom)
    assert len(stub.calls) <= 3


def test_local_double_header_is_reported():
    with stub_server(lambda call: Reply(200, ihc_answer(call.body), {"X-IHC-Local-Double": "true"})) as stub:
        (result,), summary = collect(make_client(stub.url), [request()])
    assert result.local_double and summary.local_double


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(403, {"message": f"invalid key {API_KEY}"}),
        Reply(400, {"message": f"bad request with key {API_KEY}"}),
        Reply(200, {"statusCode": 200, "value": [{"conversion_id": API_KEY}], "partialFailureErrors": []}),
        Reply(200, raw=f"not json {API_KEY}".encode()),
    ],
    ids=["403 echoing the key", "400 echoing the key", "bad answer echoing the key", "non-JSON echo"],
)
def test_api_key_never_appears_in_errors_or_logs(reply, caplog):
    caplog.set_level(logging.DEBUG)
    with stub_server(lambda call: reply) as stub:
        client = make_client(stub.url)
        with pytest.raises(IhcError) as info:
            collect(client, [request()])
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    assert API_KEY not in repr(client)
    assert API_KEY not in caplog.text
    assert info.value.__cause__ is None


def test_api_key_not_in_retry_logs_or_exhausted_error(caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(f"http://127.0.0.1:{closed_port()}", max_retries=2)
    with pytest.raises(IhcRetriesExhaustedError) as info:
        collect(client, [request()])
    assert "retry 1/2" in caplog.text
    assert API_KEY not in caplog.text
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value.last_errors)
    assert info.value.__cause__ is None and info.value.__context__ is None


# --- against the project's local IHC double ----------------------------------------------------

LOCAL_KEY = "local-double-key-7c4e0a"
CHANNELS = ("Direct Traffic", "Newsletter & Email", "FB & IG Ads", "SEO", "SEA - Brand")


def realistic_request(request_id: int, journeys: int, sessions: int, offset: int = 0) -> IhcRequest:
    """``journeys`` journeys of ``sessions`` sessions each, hours apart, varied channels."""
    out = []
    for j in range(journeys):
        conv_id = f"r{request_id}-c{j + offset}"
        for i in range(sessions):
            out.append(
                {
                    "conversion_id": conv_id,
                    "session_id": f"{conv_id}-s{i}",
                    "timestamp": f"2024-01-{1 + i // 24:02d} {i % 24:02d}:{(7 * j) % 60:02d}:00",
                    "channel_label": CHANNELS[(i + j) % len(CHANNELS)],
                    "holder_engagement": (i + j) % 2,
                    "closer_engagement": int(i % 3 == 0),
                    "conversion": int(i == sessions - 1),
                    "impression_interaction": 0,
                }
            )
    return IhcRequest(request_id, out)


@pytest.fixture
def local_double():
    """Start the local IHC double with a config; yields (base_url, stats())."""
    with ExitStack() as stack:

        def start(faults: FaultConfig | None = None, **config):
            config.setdefault("api_keys", (LOCAL_KEY,))
            url = stack.enter_context(serve(ServerConfig(faults=faults or FaultConfig(), **config)))
            return url, lambda: requests_lib.get(f"{url}/stats", timeout=5).json()

        yield start


def local_client(url: str, sleep: SleepRecorder | None = None, **options) -> IhcClient:
    options.setdefault("timeout", 5.0)
    api_key = options.pop("api_key", LOCAL_KEY)
    conv_type_id = options.pop("conv_type_id", "demo")
    return IhcClient(url, api_key, conv_type_id, sleep=sleep or SleepRecorder(), **options)


def test_local_double_answers_are_valid(local_double):
    url, stats = local_double()
    requests = [realistic_request(i, journeys=10, sessions=1 + i) for i in range(6)]
    results, summary = collect(local_client(url), requests)
    assert summary.requests_answered == 6 and summary.retries == 0
    assert summary.rows == sum(len(r.rows) for r in requests)
    assert summary.local_double and all(r.local_double for r in results)
    single = next(r for r in results if r.request_id == 0)
    assert {(row.initializer, row.holder, row.closer, row.ihc) for row in single.rows} == {(1.0, 0.0, 1.0, 1.0)}
    assert stats()["by_status"] == {"200": 6}


def test_local_double_forced_partial_failures(local_double):
    url, stats = local_double(FaultConfig(partial_failure_rate=0.3, seed=4))
    requests = [realistic_request(i, journeys=10, sessions=3) for i in range(5)]
    results, summary = collect(local_client(url), requests)
    failed = [f for r in results for f in r.failed]
    assert failed and summary.journeys_rejected == len(failed) == stats()["failed_journeys"]
    assert all("injected fault" in f.message for f in failed)
    failed_ids = {f.conversion_id for f in failed}
    assert not failed_ids & {row.conversion_id for r in results for row in r.rows}
    assert summary.rows == 3 * (50 - len(failed))
    assert {r.status_code for r in results if r.failed} == {206}


@pytest.mark.parametrize(
    ("request_", "hint"),
    [
        (realistic_request(1, journeys=1, sessions=201), "max_sessions_per_request"),
        (realistic_request(1, journeys=101, sessions=1), "max_journeys_per_request"),
    ],
    ids=["sessions", "journeys"],
)
def test_local_double_413_over_the_free_limits(local_double, request_, hint):
    url, stats = local_double(profile="free")
    with pytest.raises(IhcConfigurationError, match=hint) as info:
        collect(local_client(url), [request_])
    assert info.value.status_code == 413
    assert stats()["requests"] == 1


@pytest.mark.parametrize(
    ("options", "status", "hint"),
    [({"api_key": "wrong-key"}, 403, "password"), ({"conv_type_id": "nope"}, 404, "conv_type_id")],
)
def test_local_double_fatal_configuration(local_double, options, status, hint):
    url, stats = local_double()
    with pytest.raises(IhcConfigurationError, match=hint) as info:
        collect(local_client(url, max_concurrency=4, **options), (realistic_request(i, 2, 2) for i in range(40)))
    assert info.value.status_code == status
    assert stats()["requests"] <= 4  # no new request after the first fatal answer
    assert "wrong-key" not in str(info.value)


def test_local_double_hangs_become_timeouts_and_are_retried(local_double):
    url, stats = local_double(FaultConfig(hang_rate=0.3, hang_seconds=1.5, seed=2))
    sleep = SleepRecorder()
    start = time.monotonic()
    _, summary = collect(
        local_client(url, sleep, timeout=0.3, max_retries=10, max_concurrency=4),
        [realistic_request(i, 5, 2) for i in range(10)],
    )
    assert summary.requests_answered == 10
    assert summary.retries >= 1 and len(sleep.calls) == summary.retries
    assert time.monotonic() - start < 20
    assert stats()["by_status"]["200"] == 10


def test_local_double_429_every_nth_honours_retry_after(local_double):
    url, stats = local_double(FaultConfig(rate_limit_every=3, retry_after=2))
    sleep = SleepRecorder()
    requests = [realistic_request(i, 3, 2) for i in range(9)]
    _, summary = collect(local_client(url, sleep, max_concurrency=2), requests)
    limited = stats()["by_status"]["429"]
    assert summary.requests_answered == 9
    assert limited >= 3 and summary.retries == limited
    assert sleep.calls == [2.0] * limited


def test_local_double_transient_errors_are_absorbed(local_double):
    url, stats = local_double(FaultConfig(error_rate=0.3, seed=5))
    sleep = SleepRecorder()
    _, summary = collect(
        local_client(url, sleep, max_retries=10, backoff_base=0.5, backoff_max=4.0),
        [realistic_request(i, 4, 3) for i in range(20)],
    )
    by_status = stats()["by_status"]
    errors = by_status.get("500", 0) + by_status.get("503", 0)
    assert summary.requests_answered == 20 and by_status["200"] == 20
    assert errors >= 1 and summary.retries == errors
    assert all(0.0 <= delay <= 4.0 for delay in sleep.calls)


def test_local_double_sees_at_most_max_concurrency_requests(local_double):
    url, stats = local_double(FaultConfig(latency_ms=80))
    requests = (realistic_request(i, 2, 2) for i in range(12))
    _, summary = collect(local_client(url, max_concurrency=3), requests)
    assert summary.requests_answered == 12
    assert stats()["max_in_flight"] == 3


# --- trust fixes -------------------------------------------------------------------------------


def test_a_trickling_answer_is_cut_at_the_timeout_and_retried():
    """One byte every 0.3 s never trips a 1 s wait for data; the whole answer still must be in within 1 s."""
    slow = lambda call: Reply(200, ihc_answer(call.body), trickle=0.3)  # noqa: E731
    sleep = SleepRecorder()
    with stub_server(sequence(slow, slow)) as stub:
        started = time.monotonic()
        (result,), summary = collect(make_client(stub.url, sleep, timeout=1.0, max_retries=2), [request()])
        elapsed = time.monotonic() - started
    assert result.attempts == 3 and summary.retries == 2 and len(stub.calls) == 3
    assert 2.0 <= elapsed < 4.5  # two attempts cut at 1 s each, not 2 x 60 s of trickle


def test_trickle_until_retries_run_out_is_a_transient_failure():
    with stub_server(lambda call: Reply(200, ihc_answer(call.body), trickle=0.3)) as stub:
        started = time.monotonic()
        with pytest.raises(IhcRetriesExhaustedError) as info:
            make_client(stub.url, timeout=0.5, max_retries=1).send_one(request())
    assert time.monotonic() - started < 3
    assert "no complete answer within 0.5 s" in info.value.last_errors["r1"]
    assert not isinstance(info.value, PermanentError)


def _gzip_bomb(decoded_bytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(decoded_bytes >> 20)) + packer.flush()


def test_a_gzip_bomb_is_stopped_at_the_cap_without_inflating_it():
    bomb = _gzip_bomb(1 << 30)  # 1 GiB of zeros in about 1 MB
    tracemalloc.start()
    try:
        with stub_server(lambda call: Reply(200, raw=bomb, headers={"Content-Encoding": "gzip"})) as stub:
            with pytest.raises(IhcContractError, match="cap of") as info:
                collect(make_client(stub.url), [request()])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(stub.calls) == 1, "deterministic: not retried"
    assert isinstance(info.value, IhcContractError)
    assert peak < 64 << 20, f"{peak:,} bytes held while reading the answer"


def test_max_response_bytes_caps_every_answer():
    with stub_server() as stub:
        with pytest.raises(IhcContractError, match="max_response_bytes"):
            collect(make_client(stub.url, max_response_bytes=100), [request()])
        (result,), _ = collect(make_client(stub.url, max_response_bytes=100_000), [request()])
    assert len(result.rows) == 3


@pytest.mark.parametrize(
    ("ihc", "stored"), [(-9e-7, 0.0), (-1e-6, 0.0), (1 + 5e-7, 1.0)], ids=["-9e-7", "-1e-6", "1+5e-7"]
)
def test_rounding_noise_outside_0_1_is_stored_as_the_bound(ihc, stored):
    def answer(call: Call) -> Reply:
        body = ihc_answer(call.body)
        body["value"][0]["ihc"] = ihc
        body["value"][1]["ihc"] = 1 - ihc
        return Reply(200, body)

    with stub_server(answer) as stub:
        (result,), _ = collect(make_client(stub.url), [request("r", {"c1": 2})])
    assert result.rows[0].ihc == stored
    assert all(0.0 <= getattr(row, column) <= 1.0 for row in result.rows
               for column in ("initializer", "holder", "closer", "ihc"))


@pytest.mark.parametrize(
    ("column", "value"),
    [("ihc", -2e-6), ("ihc", 1.01), ("holder", -0.5), ("ihc", float("nan")), ("closer", float("inf"))],
)
def test_credit_out_of_range_or_not_finite_is_a_contract_violation(column, value):
    def answer(call: Call) -> Reply:
        body = ihc_answer(call.body)
        body["value"][0][column] = value
        return Reply(200, raw=json.dumps(body).encode())  # NaN/Infinity literals, as a broken server sends

    with stub_server(answer) as stub:
        with pytest.raises(IhcContractError, match="invalid answer"):
            collect(make_client(stub.url), [request("r", {"c1": 1})])
    assert len(stub.calls) == 1


def test_contract_and_configuration_errors_are_permanent_transient_ones_are_not():
    assert issubclass(IhcContractError, PermanentError)
    assert issubclass(IhcConfigurationError, PermanentError)
    assert not issubclass(IhcRetriesExhaustedError, PermanentError)


def test_cancel_cuts_a_long_wait_short_and_sends_nothing_more():
    with stub_server(sequence(Reply(429, {}, {"Retry-After": "30"}))) as stub:
        client = IhcClient(stub.url, API_KEY, "demo", backoff_max=60.0, max_concurrency=1)  # real waits
        threading.Timer(0.3, client.cancel).start()
        started = time.monotonic()
        with pytest.raises(IhcRetriesExhaustedError, match="cancelled") as info:
            client.compute_ihc([request("a"), request("b")], lambda result: None)
    assert time.monotonic() - started < 3
    assert len(stub.calls) == 1 and info.value.request_ids == ["a"]


SPACED_KEY = API_KEY + "\n"


def test_a_key_with_surrounding_whitespace_is_sent_stripped():
    with stub_server() as stub:
        collect(IhcClient(stub.url, f"  {SPACED_KEY}", "demo"), [request()])
    assert stub.calls[0].headers["x-api-key"] == API_KEY


@pytest.mark.parametrize("key", ["abc\ndef-secret", "abc def-secret", "abc\tdef-secret", "abc\x7fdef-secret"])
def test_a_key_with_inner_whitespace_or_control_characters_is_refused_without_showing_it(key):
    with pytest.raises(IhcConfigurationError, match="whitespace or control characters") as info:
        IhcClient("http://127.0.0.1:1", key, "demo")
    for part in ("abc", "def-secret"):
        assert part not in str(info.value)


def test_every_form_of_the_key_is_redacted():
    redact = Redactor("k/y+1 \n")
    text = "raw k/y+1 \n, repr 'k/y+1 \\n', url k%2Fy%2B1+%0A and k%2Fy%2B1%20%0A, stripped k/y+1"
    assert "k/y" not in redact(text) and "k%2F" not in redact(text)
    assert redact(text).count("***") == 5


def test_a_server_echoing_the_key_in_any_form_does_not_leak_it(caplog):
    caplog.set_level(logging.DEBUG)
    echo = f"key {SPACED_KEY!r} / {SPACED_KEY.strip()} / {SPACED_KEY.strip()}%0A"
    with stub_server(sequence(Reply(503, {"message": echo}), Reply(403, {"message": echo}))) as stub:
        with pytest.raises(IhcConfigurationError) as info:
            collect(make_client(stub.url).__class__(stub.url, SPACED_KEY, "demo", sleep=SleepRecorder()), [request()])
    for text in (str(info.value), repr(info.value.args), caplog.text):
        assert API_KEY not in text
    assert "***" in str(info.value)


# --- transport settings: private CA, client certificate, proxy ------------------------------------


@dataclass(frozen=True)
class Pki:
    """Files of a private CA, a server certificate for 127.0.0.1 and a client certificate it signed."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)

    def issue(name: str, signer=None, *, client: bool = False):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        signer_cert, signer_key = signer or (None, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(signer_cert.subject if signer_cert else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=signer is None, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        )
        if signer is None:
            builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                            critical=True)
        elif client:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(signer_key, hashes.SHA256())
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert, key

    ca = issue("ihc-test-ca")
    issue("ihc-server", ca)
    issue("ihc-client", ca, client=True)
    return Pki(*(str(folder / name) for name in ("ihc-test-ca.pem", "ihc-server.pem", "ihc-server.key",
                                                 "ihc-client.pem", "ihc-client.key")))


@contextmanager
def tls_server(pki: Pki, *, client_certificates: bool = False) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server answering like the API; yields its URL and the client certificates' names seen."""
    clients: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            peer = self.connection.getpeercert() or {}
            clients.extend(value for rdn in peer.get("subject", ()) for name, value in rdn if name == "commonName")
            payload = json.dumps(ihc_answer(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", clients
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_private_ca_is_trusted_through_the_extra_verify(pki, tmp_path, monkeypatch):
    sleep = SleepRecorder()
    with tls_server(pki) as (url, _):
        with pytest.raises(IhcConfigurationError, match="IHC request 'r1': TLS error") as info:
            collect(make_client(url, sleep), [request()])
        # A CA bundle of the environment does not override the one set on the connection.
        other = tmp_path / "other-ca.pem"
        other.write_bytes(b"")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
        (result,), _ = collect(make_client(url, verify=pki.ca), [request()])
    assert sleep.calls == [] and info.value.status_code is None, "a TLS error is not retried"
    assert len(result.rows) == 3


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_turns_certificate_checks_off(pki):
    with tls_server(pki) as (url, _):
        (result,), _ = collect(make_client(url, verify=False), [request()])
    assert len(result.rows) == 3


def test_a_client_certificate_from_the_extra_cert_is_presented(pki, tmp_path):
    combined = tmp_path / "client.pem"
    combined.write_text(Path(pki.client_cert).read_text() + Path(pki.client_key).read_text())
    with tls_server(pki, client_certificates=True) as (url, clients):
        for cert in ([pki.client_cert, pki.client_key], str(combined)):
            (result,), _ = collect(make_client(url, verify=pki.ca, cert=cert), [request()])
            assert len(result.rows) == 3
        with pytest.raises(IhcError):
            collect(make_client(url, verify=pki.ca, max_retries=0), [request()])
    assert clients == ["ihc-client", "ihc-client"]


def test_requests_go_through_the_proxy_of_the_extra_proxies(monkeypatch):
    # A proxy from the environment does not override the one set on the connection.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with stub_server() as proxy:
        (result,), _ = collect(make_client("http://ihc.invalid", proxies={"http": proxy.url}), [request()])
    (call,) = proxy.calls
    assert call.headers["host"] == "ihc.invalid" and call.path == "/v1/compute_ihc"
    assert len(result.rows) == 3
