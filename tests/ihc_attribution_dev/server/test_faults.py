"""Fault injection (seeded, repeatable) and concurrency, over real HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ihc_attribution_dev.server.app import plan_faults
from ihc_attribution_dev.server.config import FaultConfig, ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution_dev.server.helpers import KEY, journey, post

BODY = {"customer_journeys": journey("c1", ["2024-01-01 10:00:00", "2024-01-01 12:00:00"])}


def config(**faults) -> ServerConfig:
    return ServerConfig(api_keys=(KEY,), faults=FaultConfig(**faults))


def statuses(url: str, n: int, body=BODY) -> list[int]:
    with requests.Session() as s:
        return [post(url, body, session=s).status_code for _ in range(n)]


def test_no_faults_by_default():
    assert FaultConfig().active == []
    with serve(ServerConfig(api_keys=(KEY,))) as url:
        assert statuses(url, 10) == [200] * 10


@pytest.mark.parametrize("every,retry_after", [(3, 1), (2, 7)])
def test_429_on_every_nth_request_with_retry_after(every, retry_after):
    with serve(config(rate_limit_every=every, retry_after=retry_after)) as url:
        answers = [post(url, BODY) for _ in range(6)]
    expected = [429 if n % every == 0 else 200 for n in range(1, 7)]
    assert [a.status_code for a in answers] == expected
    limited = answers[every - 1]
    assert limited.headers["Retry-After"] == str(retry_after)
    assert limited.json()["statusCode"] == 429
    assert limited.json()["retry_after"] == retry_after
    assert "Retry-After" not in answers[0].headers


def test_error_rate_gives_500_and_503_repeatably():
    with serve(config(error_rate=0.5, seed=7)) as url:
        first = statuses(url, 30)
    with serve(config(error_rate=0.5, seed=7)) as url:
        again = statuses(url, 30)
    with serve(config(error_rate=0.5, seed=8)) as url:
        other_seed = statuses(url, 30)
    assert first == again
    assert first != other_seed
    assert set(first) == {200, 500, 503}
    assert 5 <= sum(s != 200 for s in first) <= 25


def test_error_rate_1_fails_everything_with_a_json_body():
    with serve(config(error_rate=1.0)) as url:
        r = post(url, BODY)
        assert r.status_code in (500, 503)
        assert r.json()["statusCode"] == r.status_code
        assert "injected fault" in r.json()["message"]
        assert r.headers["X-IHC-Local-Double"] == "true"


def test_configuration_errors_win_over_injected_faults():
    with serve(config(error_rate=1.0, rate_limit_every=1)) as url:
        assert post(url, BODY, key="wrong").status_code == 403
        assert post(url, BODY, conv_type_id="nope").status_code == 404
        assert post(url, BODY).status_code == 429  # rate limiting comes before 5xx


def test_every_request_takes_at_least_the_latency():
    with serve(config(latency_ms=200)) as url:
        started = time.perf_counter()
        assert post(url, BODY).status_code == 200
        assert time.perf_counter() - started >= 0.2


def test_hang_exceeds_the_client_timeout_without_blocking_others():
    with serve(config(hang_rate=1.0, hang_seconds=2)) as url:
        with ThreadPoolExecutor(2) as pool:
            hanging = pool.submit(post, url, BODY, timeout=0.5)
            time.sleep(0.1)
            started = time.perf_counter()
            health = requests.get(url + "/health", timeout=1.0)  # served while the other request sleeps
            assert health.status_code == 200
            assert time.perf_counter() - started < 0.5
            with pytest.raises(requests.Timeout):
                hanging.result()


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_fault_plan_depends_only_on_seed_and_request_number(rate):
    cfg = config(hang_rate=rate, error_rate=rate, seed=42)
    plans = [plan_faults(cfg, n) for n in range(1, 401)]
    again = [plan_faults(cfg, n) for n in range(1, 401)]
    assert [(p.hang, p.error_status) for p in plans] == [(p.hang, p.error_status) for p in again]
    hangs = sum(p.hang for p in plans)
    errors = sum(p.error_status is not None for p in plans)
    assert abs(hangs - 400 * rate) < 400 * 0.1
    assert abs(errors - 400 * rate) < 400 * 0.1
    # Another seed, another sequence.
    other = [plan_faults(config(hang_rate=rate, error_rate=rate, seed=43), n) for n in range(1, 401)]
    assert [p.hang for p in plans] != [p.hang for p in other]


def test_hang_decisions_do_not_shift_when_another_rate_changes():
    # Each request draws all its values in a fixed order, so switching errors on keeps the hangs.
    a = [plan_faults(config(hang_rate=0.3, seed=1), n).hang for n in range(1, 200)]
    b = [plan_faults(config(hang_rate=0.3, error_rate=0.5, seed=1), n).hang for n in range(1, 200)]
    assert a == b


def _failed_ids(url: str, rows: list[dict]) -> list[list[str]]:
    out = []
    for _ in range(3):
        r = post(url, {"customer_journeys": rows})
        body = r.json()
        failed = [f["conversion_id"] for f in body["partialFailureErrors"]]
        answered = {v["conversion_id"] for v in body["value"]}
        assert not answered & set(failed)  # no rows for a failed journey
        assert answered | set(failed) == {f"c{i}" for i in range(20)}
        assert r.status_code == (206 if failed else 200)
        assert body["statusCode"] == r.status_code
        out.append(failed)
    return out


def test_partial_failure_rate_is_seeded_and_repeatable():
    rows = []
    for i in range(20):
        rows += journey(f"c{i}", ["2024-01-01 10:00:00", "2024-01-01 11:00:00"])
    with serve(config(partial_failure_rate=0.3, seed=3)) as url:
        first = _failed_ids(url, rows)
        message = post(url, {"customer_journeys": rows}).json()["partialFailureErrors"][0]["message"]
    with serve(config(partial_failure_rate=0.3, seed=3)) as url:
        again = _failed_ids(url, rows)
    assert first == again
    assert all(1 <= len(f) <= 15 for f in first)
    assert first[0] != first[1]  # a retry of a failed journey can succeed
    assert "injected fault" in message


def test_concurrent_requests_with_latency_complete_in_about_the_time_of_one():
    n, latency = 20, 0.4
    with serve(config(latency_ms=latency * 1000)) as url:
        with ThreadPoolExecutor(n) as pool:
            started = time.perf_counter()
            answers = list(pool.map(lambda _: post(url, BODY), range(n)))
            elapsed = time.perf_counter() - started
        stats = requests.get(url + "/stats").json()
    assert [a.status_code for a in answers] == [200] * n
    assert elapsed < n * latency / 3  # one after the other: n * latency = 8 s; concurrent: about one latency
    assert stats["max_in_flight"] >= n // 2
    assert stats["requests"] == n and stats["in_flight"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"error_rate": 1.5}, {"hang_rate": -0.1}, {"partial_failure_rate": 2}, {"latency_ms": -1},
     {"rate_limit_every": -1}, {"retry_after": 1.5}, {"seed": "x"}],
)
def test_fault_config_validation(kwargs):
    with pytest.raises(ValueError):
        FaultConfig(**kwargs)
