"""IhcHook: connection from the environment -> settings and a cached IhcClient."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from ihc_attribution.ihc.answers import IhcRequest, IhcResult
from ihc_attribution.ihc.client import IhcClient
from ihc_attribution.ihc.errors import IhcConfigurationError, IhcRetriesExhaustedError
from ihc_attribution.ihc.hook import IhcHook, build_base_url
from ihc_attribution.ihc.settings import KNOWN_EXTRAS, IhcSettings, parse_settings
from ihc_attribution.packing import lower_bound, pack_journeys
from ihc_attribution.provider import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution.ihc_stub import Reply, ihc_answer, stub_server

API_KEY = "hook-test-key-93b7d1"
CONN_ENV = "AIRFLOW_CONN_IHC_API"


def set_connection(monkeypatch, env: str = CONN_ENV, **fields) -> None:
    """Define the connection in the JSON form Airflow reads from the environment."""
    conn = {"conn_type": "ihc", "host": "127.0.0.1", "schema": "http", "password": API_KEY,
            "extra": {"conv_type_id": "demo"}}
    conn.update(fields)
    monkeypatch.setenv(env, json.dumps(conn))


def test_the_ihc_package_knows_nothing_of_the_database():
    code = "import sys, ihc_attribution.ihc.hook; print(' '.join(m for m in sys.modules if m.startswith('ihc_attribution.')))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    outside = {name for name in loaded if not name.startswith("ihc_attribution.ihc")}
    # PermanentError, the provider's connection type, and the env settings that Airflow's provider loading reads.
    assert outside <= {"ihc_attribution.errors", "ihc_attribution.provider", "ihc_attribution.settings"}, outside


def test_init_does_not_look_up_the_connection(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("connection looked up in __init__")

    monkeypatch.setattr(IhcHook, "get_connection", forbidden)
    monkeypatch.delenv(CONN_ENV, raising=False)
    hook = IhcHook()
    assert hook.ihc_conn_id == "ihc_api"
    assert IhcHook(ihc_conn_id="other").ihc_conn_id == "other"


def test_class_attributes_name_the_connection():
    assert IhcHook.conn_name_attr == "ihc_conn_id"
    assert IhcHook.default_conn_name == "ihc_api"
    assert IhcHook.conn_type == "ihc"
    assert IhcHook.hook_name == "IHC Attribution API"
    behaviour = UI_FIELD_BEHAVIOUR
    assert "login" in behaviour["hidden_fields"]
    assert behaviour["relabeling"]["password"] == "API key"
    placeholder = json.loads(behaviour["placeholders"]["extra"])
    assert placeholder["conv_type_id"].startswith("<")  # required, no default to copy by mistake
    assert set(placeholder) <= set(KNOWN_EXTRAS)


def test_connection_form_fields_match_the_settings():
    assert set(CONN_FIELDS) == {"conv_type_id", "max_journeys_per_request", "max_sessions_per_request"}
    for name, spec in CONN_FIELDS.items():
        model_field = IhcSettings.model_fields[name]
        expected = None if model_field.is_required() else model_field.default
        assert spec["schema"].get("default") == expected, name
        assert spec["label"]
    assert "password" in UI_FIELD_BEHAVIOUR["relabeling"]  # the API key field


def test_http_connections_still_work_with_a_deprecation_warning(monkeypatch, caplog, capsys):
    caplog.set_level(logging.WARNING)
    set_connection(monkeypatch, conn_type="http")
    assert IhcHook().settings.conv_type_id == "demo"
    captured = capsys.readouterr()
    assert "change its conn_type to 'ihc'" in caplog.text + captured.out + captured.err


def test_defaults_when_the_connection_has_no_extras(monkeypatch):
    set_connection(monkeypatch, host="api.ihc-attribution.com", schema=None, extra={"conv_type_id": "orders"})
    hook = IhcHook()
    client = hook.get_conn()
    assert isinstance(client, IhcClient)
    assert client.url == "https://api.ihc-attribution.com/v1/compute_ihc"
    assert hook.settings == IhcSettings(base_url="https://api.ihc-attribution.com", conv_type_id="orders")
    s = hook.settings
    assert (s.max_journeys_per_request, s.max_sessions_per_request) == (100, 3000)
    assert s.max_concurrency == 4 and s.max_retries == 5 and s.timeout == 30.0
    assert s.oversized_journey_policy == "truncate" and s.redistribution_parameter is None
    assert s.max_response_bytes is None and s.max_rejected_share == 1.0


@pytest.mark.parametrize("extra", [{}, {"conv_type_id": ""}, {"conv_type_id": "  "}, {"conv_type_id": None}])
def test_conv_type_id_is_required(monkeypatch, extra):
    set_connection(monkeypatch, extra=extra)
    with pytest.raises(IhcConfigurationError, match="extra conv_type_id is required"):
        IhcHook().get_conn()


def test_string_extras_are_coerced(monkeypatch):
    parameter = {
        "closer": {"direction": "any_session", "receive_threshold": 0.1, "redistribution_channel_labels": ["A"]}
    }
    extra = {
        "conv_type_id": "orders",
        "max_journeys_per_request": "50",
        "max_sessions_per_request": "200",
        "max_concurrency": "2",
        "timeout": "2.5",
        "max_retries": "0",
        "backoff_base": "0.5",
        "backoff_max": "10",
        "redistribution_parameter": json.dumps(parameter),
        "oversized_journey_policy": " SKIP ",
        "max_response_bytes": "5000000",
        "max_rejected_share": "0.5",
    }
    set_connection(monkeypatch, port=8080, extra=json.dumps(extra))
    hook = IhcHook()
    assert hook.settings == IhcSettings(
        base_url="http://127.0.0.1:8080",
        conv_type_id="orders",
        max_journeys_per_request=50,
        max_sessions_per_request=200,
        max_concurrency=2,
        timeout=2.5,
        max_retries=0,
        backoff_base=0.5,
        backoff_max=10.0,
        redistribution_parameter=parameter,
        oversized_journey_policy="skip",
        max_response_bytes=5_000_000,
        max_rejected_share=0.5,
    )
    assert hook.get_conn().url == "http://127.0.0.1:8080/v1/compute_ihc"


def test_native_json_extras_are_accepted(monkeypatch):
    set_connection(monkeypatch, extra={"conv_type_id": "demo", "max_sessions_per_request": 200, "timeout": 5,
                                       "redistribution_parameter": {}})
    settings = IhcHook().settings
    assert settings.max_sessions_per_request == 200 and settings.timeout == 5.0
    assert settings.redistribution_parameter == {}


def test_get_conn_is_cached_and_reads_the_connection_once(monkeypatch):
    set_connection(monkeypatch)
    lookups = []
    original = IhcHook.get_connection

    def spy(cls, conn_id):
        lookups.append(conn_id)
        return original(conn_id)

    monkeypatch.setattr(IhcHook, "get_connection", classmethod(spy))
    hook = IhcHook()
    assert hook.get_conn() is hook.get_conn()
    _ = hook.settings, hook.settings
    assert lookups == ["ihc_api"]


def test_named_connection(monkeypatch):
    set_connection(monkeypatch, env="AIRFLOW_CONN_IHC_STAGING", host="staging.example")
    assert IhcHook(ihc_conn_id="ihc_staging").settings.base_url == "http://staging.example"


@pytest.mark.parametrize(
    ("host", "schema", "port", "expected"),
    [
        ("api.ihc-attribution.com", None, None, "https://api.ihc-attribution.com"),
        ("api.ihc-attribution.com", "", None, "https://api.ihc-attribution.com"),
        ("127.0.0.1", "http", 8080, "http://127.0.0.1:8080"),
        ("http://127.0.0.1:9000", "https", 8080, "http://127.0.0.1:9000"),  # host wins
        ("http://127.0.0.1", None, 8080, "http://127.0.0.1:8080"),
        ("https://gw.example/ihc/", None, None, "https://gw.example/ihc"),
    ],
)
def test_build_base_url(host, schema, port, expected):
    assert build_base_url(host, schema, port) == expected


@pytest.mark.parametrize(("host", "schema"), [("", None), (None, "https"), ("h.example", "ftp"), ("ftp://h", None)])
def test_build_base_url_rejects(host, schema):
    with pytest.raises(IhcConfigurationError):
        build_base_url(host, schema)


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"max_concurrency": "abc"}, "max_concurrency"),
        ({"max_concurrency": "0"}, "max_concurrency"),
        ({"max_journeys_per_request": 2.5}, "max_journeys_per_request"),
        ({"max_sessions_per_request": True}, "max_sessions_per_request"),
        ({"max_retries": "-1"}, "max_retries"),
        ({"timeout": "0"}, "timeout"),
        ({"timeout": "fast"}, "timeout"),
        ({"backoff_max": "-5"}, "backoff_max"),
        ({"backoff_base": "nan"}, "backoff_base"),
        ({"oversized_journey_policy": "split"}, "oversized_journey_policy"),
        ({"redistribution_parameter": "{not json"}, "redistribution_parameter"),
        ({"redistribution_parameter": "[1, 2]"}, "redistribution_parameter"),
        ({"redistribution_parameter": {"middle": {}}}, "redistribution_parameter"),
        ({"max_session_per_request": 200}, "max_session_per_request"),  # typo: unknown extra
        ({"max_response_bytes": "0"}, "max_response_bytes"),
        ({"max_rejected_share": "1.5"}, "max_rejected_share"),
        ({"max_rejected_share": "0"}, "max_rejected_share"),
        ({"verify": "/no/such/ca-bundle.pem"}, "verify"),
        ({"cert": "/no/such/client.pem"}, "cert"),
        ({"cert": '["/no/such/client.pem", "/no/such/client.key"]'}, "cert"),
        ({"proxies": "http://proxy.example:3128"}, "proxies"),
        ({"proxies": {"https": 3128}}, "proxies"),
    ],
)
def test_bad_extras_fail_with_a_message_naming_them(extra, name):
    with pytest.raises(IhcConfigurationError, match=f"connection 'ihc_api': .*{name}"):
        parse_settings({"base_url": "https://h.example", "conv_type_id": "demo", **extra}, "connection 'ihc_api'")


def test_empty_string_extras_fall_back_to_defaults():
    blanks = {name: "" for name in KNOWN_EXTRAS if name != "conv_type_id"}
    settings = parse_settings({"base_url": "https://h.example", "conv_type_id": "demo", **blanks})
    assert settings == IhcSettings(base_url="https://h.example", conv_type_id="demo")


def test_transport_extras_in_text_and_json_forms(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("")
    base = {"base_url": "https://h.example", "conv_type_id": "demo"}
    assert parse_settings(base).verify is True
    assert parse_settings({**base, "verify": "False"}).verify is False
    assert parse_settings({**base, "verify": " true "}).verify is True
    assert parse_settings({**base, "verify": str(ca)}).verify == str(ca)
    assert parse_settings({**base, "verify": str(tmp_path)}).verify == str(tmp_path)  # a CA directory
    assert parse_settings({**base, "cert": str(cert)}).cert == str(cert)
    assert parse_settings({**base, "cert": [str(cert), str(key)]}).cert == (str(cert), str(key))
    assert parse_settings({**base, "cert": json.dumps([str(cert), str(key)])}).cert == (str(cert), str(key))
    proxies = {"https": "http://proxy.example:3128"}
    assert parse_settings({**base, "proxies": proxies}).proxies == proxies
    assert parse_settings({**base, "proxies": json.dumps(proxies)}).proxies == proxies


def test_the_connection_reaches_the_service_through_its_proxy(monkeypatch):
    with stub_server() as proxy:
        set_connection(monkeypatch, host="ihc.invalid", extra={"conv_type_id": "demo", "proxies": {"http": proxy.url}})
        ok, message = IhcHook().test_connection()
    assert ok, message
    assert proxy.calls[0].headers["host"] == "ihc.invalid"


def test_the_connection_accepts_the_transport_extras_of_airflows_http_hook(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    proxies = {"https": "http://proxy.example:3128"}
    set_connection(monkeypatch, extra={"conv_type_id": "demo", "verify_ssl": str(ca), "cert": str(ca),
                                       "proxies": json.dumps(proxies), "trust_env": "false", "timeout": "5"})
    settings = IhcHook().settings
    assert (settings.verify, settings.cert, settings.proxies) == (str(ca), str(ca), proxies)
    assert settings.trust_env is False and settings.timeout == 5.0
    assert parse_settings({"base_url": "https://h.example", "conv_type_id": "demo", "verify": "false"}).verify is False


def test_a_bad_proxies_extra_is_named_without_showing_its_value():
    with pytest.raises(IhcConfigurationError) as raised:
        parse_settings({"base_url": "https://h.example", "conv_type_id": "demo", "proxies": "http://u:s3cret@proxy.example:1"})
    assert "proxies" in str(raised.value) and "s3cret" not in str(raised.value)


def test_verify_and_verify_ssl_together_are_refused_as_one_setting_given_twice():
    with pytest.raises(IhcConfigurationError, match="verify and verify_ssl are one setting"):
        parse_settings({"base_url": "https://h.example", "conv_type_id": "demo", "verify": "true", "verify_ssl": "false"})


@pytest.mark.parametrize("trust_env", [True, False])
def test_trust_env_decides_whether_the_environment_s_proxy_is_used(monkeypatch, trust_env):
    with stub_server() as proxy, stub_server() as service:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        set_connection(monkeypatch, host=service.url, extra={"conv_type_id": "demo", "trust_env": str(trust_env)})
        ok, message = IhcHook().test_connection()
    assert ok, message
    assert (len(proxy.calls), len(service.calls)) == ((1, 0) if trust_env else (0, 1))


@pytest.mark.parametrize("password", [None, "", " \n"])
def test_missing_password_is_a_configuration_error(monkeypatch, password):
    set_connection(monkeypatch, password=password)
    with pytest.raises(IhcConfigurationError, match="password"):
        IhcHook().get_conn()


def test_a_pasted_key_with_a_trailing_newline_is_stripped(monkeypatch):
    with stub_server() as stub:
        set_connection(monkeypatch, host=stub.url, password=API_KEY + "\r\n")
        ok, message = IhcHook().test_connection()
    assert ok, message
    assert stub.calls[0].headers["x-api-key"] == API_KEY


def test_a_key_with_inner_whitespace_is_refused_without_showing_it(monkeypatch):
    set_connection(monkeypatch, password="hook-test\nkey-93b7d1")
    ok, message = IhcHook().test_connection()
    assert not ok and "whitespace or control characters" in message and "'ihc_api'" in message
    assert "hook-test" not in message and "93b7d1" not in message


def test_api_key_is_not_in_repr_or_logs(monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    set_connection(monkeypatch)
    hook = IhcHook()
    client = hook.get_conn()
    # Airflow's task logging writes through structlog to stdout, the client's logger to logging.
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "127.0.0.1" in logs  # the settings are logged ...
    assert API_KEY not in logs  # ... the key is not
    for obj in (hook, client, hook.settings):
        assert API_KEY not in repr(obj)
        assert API_KEY not in str(obj)


def test_compute_ihc_delegates_to_the_client(monkeypatch):
    rows = [
        {
            "conversion_id": "c1",
            "session_id": f"s{i}",
            "timestamp": f"2024-01-01 10:0{i}:00",
            "channel_label": "Direct Traffic",
            "holder_engagement": 1,
            "closer_engagement": 1,
            "conversion": int(i == 1),
            "impression_interaction": 0,
        }
        for i in range(2)
    ]
    with stub_server() as stub:
        set_connection(monkeypatch, host=stub.url, extra={"conv_type_id": "orders"})
        results: list[IhcResult] = []
        progress = []
        summary = IhcHook().compute_ihc([IhcRequest("r1", rows)], results.append, progress=progress.append)
    assert stub.calls[0].query == {"conv_type_id": ["orders"]}
    assert stub.calls[0].headers["x-api-key"] == API_KEY
    assert summary.requests_answered == summary.requests_sent == summary.attempts == 1
    assert len(results[0].rows) == 2
    assert progress[0].done == 1


def test_test_connection_reports_success(monkeypatch):
    with stub_server(lambda call: Reply(200, ihc_answer(call.body), {"X-IHC-Local-Double": "true"})) as stub:
        set_connection(monkeypatch, host=stub.url)
        ok, message = IhcHook().test_connection()
    assert ok, message
    assert "local IHC double" in message
    assert len(stub.calls[0].body["customer_journeys"]) == 1


@pytest.mark.parametrize(
    ("status", "hint"), [(403, "password"), (404, "conv_type_id"), (200, "failed at the service")]
)
def test_test_connection_reports_failure_without_the_key(monkeypatch, status, hint):
    def responder(call):
        if status == 200:
            conv = call.body["customer_journeys"][0]["conversion_id"]
            return Reply(200, ihc_answer(call.body, fail={conv: "unknown channel"}))
        return Reply(status, {"message": f"rejected {API_KEY}"})

    with stub_server(responder) as stub:
        set_connection(monkeypatch, host=stub.url)
        ok, message = IhcHook().test_connection()
    assert not ok
    assert hint in message
    assert API_KEY not in message


def test_test_connection_reports_bad_configuration(monkeypatch):
    set_connection(monkeypatch, extra={"conv_type_id": "demo", "max_concurrency": "many"})
    ok, message = IhcHook().test_connection()
    assert not ok and "max_concurrency" in message


def test_sleep_injection_reaches_the_client(monkeypatch):
    waits: list[float] = []
    replies = iter([Reply(429, {}, {"Retry-After": "3"})])

    def responder(call):
        return next(replies, None) or Reply(200, ihc_answer(call.body))

    with stub_server(responder) as stub:
        set_connection(monkeypatch, host=stub.url)
        hook = IhcHook(sleep=waits.append)
        ok, message = hook.test_connection()
    assert ok, message
    assert waits == [3.0]


# --- against the project's local IHC double ----------------------------------------------------


def test_test_connection_against_the_local_double(monkeypatch):
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        set_connection(monkeypatch, host=url)
        ok, message = IhcHook().test_connection()
        assert ok, message
        set_connection(monkeypatch, host=url, password="not-the-key")
        ok, message = IhcHook().test_connection()
    assert not ok and "password" in message and "not-the-key" not in message


def test_packed_journeys_fit_the_free_account_limits_end_to_end(monkeypatch):
    """Journeys packed with the connection's limits are all accepted by a 200-session server."""
    rng = random.Random(8)
    sizes = {f"conv-{i:04d}": rng.choice([1] * 58 + [2] * 21 + list(range(3, 60))) for i in range(1500)}
    sizes["conv-long"] = 250  # over the limit: truncated to its latest 200 sessions
    with serve(ServerConfig(api_keys=(API_KEY,), profile="free")) as url:
        set_connection(monkeypatch, host=url, extra={"conv_type_id": "demo", "max_sessions_per_request": "200",
                                                     "max_concurrency": "3"})
        hook = IhcHook()
        settings = hook.settings
        assert settings.oversized_journey_policy == "truncate"
        sent = {conv_id: min(n, settings.max_sessions_per_request) for conv_id, n in sizes.items()}
        packed = pack_journeys(sent, settings.max_journeys_per_request, settings.max_sessions_per_request)

        def requests():
            for number, conv_ids in enumerate(packed):
                rows = []
                for conv_id in conv_ids:
                    n = sizes[conv_id]
                    kept = range(n - sent[conv_id], n)  # the most recent sessions
                    rows += [
                        {
                            "conversion_id": conv_id,
                            "session_id": f"{conv_id}-{i}",
                            "timestamp": f"2024-01-{1 + i // 24 % 28:02d} {i % 24:02d}:00:00",
                            "channel_label": "SEO" if i % 2 else "Direct Traffic",
                            "holder_engagement": 1,
                            "closer_engagement": 0,
                            "conversion": int(i == n - 1),
                            "impression_interaction": 0,
                        }
                        for i in kept
                    ]
                yield IhcRequest(number, rows)

        credit: dict[str, float] = {}

        def store(result: IhcResult) -> None:
            for row in result.rows:
                credit[row.conversion_id] = credit.get(row.conversion_id, 0.0) + row.ihc

        summary = hook.compute_ihc(requests(), store, total=len(packed))
    assert sent["conv-long"] == 200
    assert summary.requests_answered == len(packed) <= lower_bound(sent, 100, 200) * 1.02
    assert summary.retries == 0 and summary.journeys_rejected == 0
    assert set(credit) == set(sizes)
    assert all(abs(total - 1) < 1e-6 for total in credit.values())


def test_sigterm_stops_the_hook_waits_and_chains_to_the_previous_handler(monkeypatch):
    """Airflow cancels a task with SIGTERM: a 30 s Retry-After wait must not keep it alive."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with stub_server(lambda call: Reply(429, {}, {"Retry-After": "30"})) as stub:
            set_connection(monkeypatch, host=stub.url, extra={"conv_type_id": "demo", "backoff_max": 60})
            hook = IhcHook()
            rows = [{"conversion_id": "c", "session_id": "s", "timestamp": "2024-01-01 10:00:00",
                     "channel_label": "SEO", "holder_engagement": 0, "closer_engagement": 0, "conversion": 1,
                     "impression_interaction": 0}]
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
            started = time.monotonic()
            with hook.stop_on_sigterm(), pytest.raises(IhcRetriesExhaustedError, match="cancelled"):
                hook.compute_ihc([IhcRequest("r1", rows)], lambda result: None)
        assert time.monotonic() - started < 3 and len(stub.calls) == 1
        assert seen == [signal.SIGTERM], "the previous handler ran too"
        assert signal.getsignal(signal.SIGTERM) is not previous  # ours is gone, the test's is back
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(("extra", "slots", "expected"), [
    ({}, 3, 3),                              # the DAG's one number: the pool slots the task holds
    ({"max_concurrency": "6"}, 3, 3),        # a larger value in the connection does not raise it
    ({"max_concurrency": "2"}, 3, 2),        # a smaller one caps it, with a warning
    ({"max_concurrency": "2"}, None, 2),     # the hook on its own reads the connection
    ({}, None, 4),                           # else the default
])
def test_requests_in_flight_are_the_pool_slots_capped_by_the_connection(monkeypatch, caplog, capsys, extra, slots,
                                                                        expected):
    caplog.set_level(logging.WARNING)
    set_connection(monkeypatch, extra={"conv_type_id": "demo", **extra})
    assert IhcHook(max_concurrency=slots).settings.max_concurrency == expected
    captured = capsys.readouterr()
    warned = "set ihc_concurrency to 2" in caplog.text + captured.out + captured.err
    assert warned == (slots == 3 and expected == 2)
