"""The pipeline against a misbehaving IHC API: the local server injects the faults over real HTTP.

Waits are shortened through the connection's extras (timeout, backoff); the faults are those of
production: 500/503, 429 with Retry-After, requests that hang past the client's timeout, and
answers that refuse the configuration, break the contract or reject the journeys.
"""

from __future__ import annotations

import logging
import shutil

import pytest
from ihc_attribution.errors import PermanentFailure

from ihc_attribution.ihc.errors import (
    IhcConfigurationError,
    IhcContractError,
    IhcRejectedJourneysError,
    IhcRetriesExhaustedError,
)
from ihc_attribution.load import LoadError
from ihc_attribution_dev.server.app import plan_faults
from ihc_attribution_dev.server.config import FaultConfig, ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution.ihc_stub import Call, Reply, ihc_answer, stub_server
from tests.helpers import expected_journeys, random_db, read_table
from tests.reliability.support import (
    API_KEY,
    STAGES,
    connection_env,
    context,
    request_states,
    result_tables,
    run_stages,
    server_requests,
    server_stats,
)

RUN, START, END = "range", "2024-01-01", "2024-01-10"
# Fast retries: the faults below must be absorbed, not waited out.
RETRYING = {"max_retries": 8, "backoff_base": 0.01, "backoff_max": 0.02, "timeout": 1.0}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """About 500 conversions over ten days; with 2 journeys per request, about 190 requests."""
    return random_db(tmp_path_factory.mktemp("faults") / "base.db", seed=41, users=500, days=10)


@pytest.fixture(scope="module")
def healthy_url():
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        yield url


@pytest.fixture(scope="module")
def reference(base, healthy_url, tmp_path_factory):
    """The same run against a server without faults."""
    tmp = tmp_path_factory.mktemp("faults-reference")
    db = tmp / "db.sqlite"
    shutil.copy(base, db)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in connection_env(db, healthy_url, tmp / "out", max_journeys_per_request=2).items():
            mp.setenv(key, value)
        run_stages(context(RUN, START, END))
    return result_tables(db)


def _use(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _attempts(db) -> int:
    frame = read_table(db, "attribution_stg_requests")
    return int(frame.loc[frame.run_id == RUN, "attempts"].sum())


def test_run_through_5xx_429_and_hangs_attributes_every_conversion_once(base, reference, tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    faults = FaultConfig(seed=2, error_rate=0.1, rate_limit_every=7, retry_after=1, hang_rate=0.01, hang_seconds=2.5)
    config = ServerConfig(api_keys=(API_KEY,), faults=faults)
    with serve(config) as url:
        _use(monkeypatch, connection_env(db, url, tmp_path / "out", max_journeys_per_request=2, max_concurrency=4,
                                         **RETRYING))
        xcom = run_stages(context(RUN, START, END))
        stats = server_stats(url)

    summary = xcom["check_run"]
    hangs = [n for n in range(1, stats["requests"] + 1) if plan_faults(config, n).hang]
    by_status = stats["by_status"]
    assert by_status.get("429", 0) >= 10 and by_status.get("500", 0) + by_status.get("503", 0) >= 10
    assert hangs, "at least one request hung past the client's timeout"
    # Every attempt reached the server once; every retry is accounted for in the summary.
    assert _attempts(db) == stats["requests"]
    assert summary["retries"] == stats["requests"] - summary["requests"] >= len(hangs) + by_status["429"]
    assert summary["requests"] > 150

    # Every conversion attributed exactly once over exactly its earlier sessions, summing to 1 ...
    expected = expected_journeys(db, "2024-01-01 00:00:00", "2024-01-11 00:00:00")
    got = read_table(db, "attribution_customer_journey")
    assert not got.duplicated(["conv_id", "session_id"]).any()
    assert got.groupby("conv_id")["session_id"].apply(set).to_dict() == {c: s for c, s in expected.items() if s}
    assert got.groupby("conv_id")["ihc"].sum().sub(1).abs().max() < 1e-6
    assert summary["attributed"] == sum(1 for s in expected.values() if s)
    # ... with the very numbers of an undisturbed run.
    assert result_tables(db) == reference


def test_retries_exhausted_fail_loudly_record_the_unanswered_and_a_rerun_finishes(
    base, reference, healthy_url, tmp_path, monkeypatch, caplog
):
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    ctx = context(RUN, START, END)
    flaky = ServerConfig(api_keys=(API_KEY,), faults=FaultConfig(seed=10, error_rate=0.5))
    with serve(flaky) as url:
        _use(monkeypatch, connection_env(db, url, tmp_path / "out", max_journeys_per_request=2, max_concurrency=1,
                                         max_retries=1))
        run_stages(ctx, STAGES[:3])
        with caplog.at_level(logging.ERROR), pytest.raises(IhcRetriesExhaustedError, match="not answered after"):
            run_stages(ctx, ("call_ihc_api",))

    states = request_states(db, RUN)
    total, done, failed = sum(states.values()), states.get("done", 0), states.get("failed", 0)
    assert done >= 1 and failed >= 1 and done + failed == total, states
    errors = read_table(db, "attribution_stg_requests")
    failed_rows = errors[errors.status == "failed"]
    assert failed_rows["error"].str.contains("HTTP 50").all(), "each unanswered request records why"
    first_failed = int(failed_rows["request_no"].min())
    assert f"{failed} of {total} requests unanswered (numbers {first_failed}," in caplog.text
    with pytest.raises(PermanentFailure, match="re-run the call_ihc_api task") as failure:
        run_stages(ctx, ("load_attribution",))
    assert isinstance(failure.value.__cause__, LoadError), "load cannot succeed by retrying itself"
    assert read_table(db, "attribution_customer_journey").empty, "nothing is published from a failed API stage"

    # The task's retry, against a service that works again: only the unanswered requests go out.
    _use(monkeypatch, connection_env(db, healthy_url, tmp_path / "out", max_journeys_per_request=2))
    before = server_requests(healthy_url)
    run_stages(ctx, STAGES[3:])
    resent = server_requests(healthy_url) - before - failed
    assert resent == 0, "requests answered before the failure are not sent again"
    assert result_tables(db) == reference


FATAL = [
    pytest.param({"api_key": "not-the-right-key"}, {}, 403, "set the right key as the password", id="wrong-key"),
    pytest.param({"conv_type_id": "no-such-type"}, {}, 404, "set the extra conv_type_id", id="unknown-conv-type"),
    pytest.param({"max_journeys_per_request": 10}, {"max_sessions": 20}, 413,
                 "lower the extras max_journeys_per_request / max_sessions_per_request", id="limit-above-account"),
]


@pytest.mark.parametrize(("conn", "server", "status", "fix"), FATAL)
def test_configuration_errors_stop_at_the_first_answer(base, tmp_path, monkeypatch, conn, server, status, fix):
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    ctx = context(RUN, START, END)
    with serve(ServerConfig(api_keys=(API_KEY,), **server)) as url:
        extra = {"max_journeys_per_request": 2, "max_concurrency": 4, **RETRYING, **conn}
        _use(monkeypatch, connection_env(db, url, tmp_path / "out", **extra))
        planned = run_stages(ctx, STAGES[:3])["pack_requests"]["requests"]
        # PermanentFailure: Airflow does not retry the task either, a retry would get the same answer
        with pytest.raises(PermanentFailure) as raised:
            run_stages(ctx, ("call_ihc_api",))
        received = server_requests(url)
    cause = raised.value.__cause__
    assert isinstance(cause, IhcConfigurationError) and cause.status_code == status
    assert fix in str(raised.value)
    assert planned >= 30 and received <= 4, f"{received} of {planned} requests sent after a fatal answer"
    assert request_states(db, RUN) == {"failed": planned}, "every unanswered request is recorded"
    assert read_table(db, "attribution_stg_requests")["error"].str.contains(fix).all()


def test_an_answer_breaking_the_contract_fails_the_task_without_retry(base, tmp_path, monkeypatch):
    """A wrong sum cannot change on a retry: PermanentFailure at the first such answer."""
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    ctx = context(RUN, START, END)

    def off_by_a_bit(call: Call) -> Reply:
        body = ihc_answer(call.body)
        body["value"][0]["ihc"] += 0.01
        return Reply(200, body)

    with stub_server(off_by_a_bit) as stub:
        _use(monkeypatch, connection_env(db, stub.url, tmp_path / "out", max_journeys_per_request=2, **RETRYING))
        planned = run_stages(ctx, STAGES[:3])["pack_requests"]["requests"]
        with pytest.raises(PermanentFailure, match="does not sum to 1") as raised:
            run_stages(ctx, ("call_ihc_api",))
    assert isinstance(raised.value.__cause__, IhcContractError)
    assert len(stub.calls) <= 2, "no retry, no new request after the violation"
    assert request_states(db, RUN) == {"failed": planned}
    assert read_table(db, "attribution_stg_results").empty, "nothing of the wrong answer is kept"


def test_when_the_api_rejects_every_journey_the_task_fails_after_checkpointing(base, tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    ctx = context(RUN, START, END)
    with serve(ServerConfig(api_keys=(API_KEY,), faults=FaultConfig(partial_failure_rate=1.0))) as url:
        _use(monkeypatch, connection_env(db, url, tmp_path / "out", max_journeys_per_request=20, max_concurrency=4))
        planned = run_stages(ctx, STAGES[:3])["pack_requests"]
        with pytest.raises(PermanentFailure, match=r"rejected (\d+) of \1 journeys sent") as raised:
            run_stages(ctx, ("call_ihc_api",))
    assert isinstance(raised.value.__cause__, IhcRejectedJourneysError)
    assert "injected fault" in str(raised.value), "the first rejection messages are shown"
    assert request_states(db, RUN) == {"done": planned["requests"]}, "every answer was checkpointed"
    issues = read_table(db, "attribution_stg_issues")
    assert (issues.reason == "api_rejected").sum() == planned["journeys"]


@pytest.mark.parametrize(("share", "fails"), [(0.5, True), (0.9, False)])
def test_max_rejected_share_sets_the_bar(base, tmp_path, monkeypatch, share, fails):
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    ctx = context(RUN, START, END)
    faults = FaultConfig(partial_failure_rate=0.6, seed=3)
    with serve(ServerConfig(api_keys=(API_KEY,), faults=faults)) as url:
        _use(monkeypatch, connection_env(db, url, tmp_path / "out", max_journeys_per_request=20, max_concurrency=4,
                                         max_rejected_share=share))
        run_stages(ctx, STAGES[:3])
        if fails:
            with pytest.raises(PermanentFailure, match="max_rejected_share=0.5"):
                run_stages(ctx, ("call_ihc_api",))
        else:
            assert run_stages(ctx, ("call_ihc_api",))["call_ihc_api"]["journeys_rejected"] > 0


@pytest.mark.parametrize("conv_type_id", ["", "   ", None])
def test_an_empty_conv_type_id_is_a_configuration_error_naming_the_extra(base, tmp_path, monkeypatch, conv_type_id):
    db = tmp_path / "db.sqlite"
    shutil.copy(base, db)
    _use(monkeypatch, connection_env(db, "http://127.0.0.1:1", tmp_path / "out", conv_type_id=conv_type_id))
    run_stages(context(RUN, START, END), STAGES[:1])
    # extract_journeys is the first stage to read the connection (an answer's scope is part of
    # each journey's fingerprint)
    with pytest.raises(PermanentFailure, match="extra conv_type_id is required") as raised:
        run_stages(context(RUN, START, END), ("extract_journeys",))
    assert isinstance(raised.value.__cause__, IhcConfigurationError)
