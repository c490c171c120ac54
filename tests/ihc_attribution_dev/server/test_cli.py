"""The command line: flags to configuration, refusing to start without a key, clean stop on signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ihc_attribution_dev.server.__main__ import build_parser, config_from_args
from tests.ihc_attribution_dev.server.helpers import journey, post

ROOT = Path(__file__).resolve().parents[3]


def parse(argv: list[str], env: dict[str, str] | None = None):
    return config_from_args(build_parser().parse_args(argv), env or {})


def test_defaults():
    cfg = parse(["--api-key", "k"])
    assert cfg.api_keys == ("k",)
    assert cfg.conv_type_ids == ("demo",)
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8765)
    assert (cfg.max_journeys, cfg.max_sessions) == (100, 3000)
    assert (cfg.weights.initializer, cfg.weights.holder, cfg.weights.closer) == (0.345, 0.380, 0.275)
    assert cfg.faults.active == []


def test_keys_from_flags_and_environment():
    cfg = parse(["--api-key", "a", "--api-key", "b"], {"IHC_API_KEYS": " c, a,,d "})
    assert cfg.api_keys == ("a", "b", "c", "d")
    assert parse([], {"IHC_API_KEYS": "env-only"}).api_keys == ("env-only",)


@pytest.mark.parametrize("env", [{}, {"IHC_API_KEYS": ""}, {"IHC_API_KEYS": " , "}])
def test_no_key_is_an_error(env):
    with pytest.raises(ValueError, match="no API key configured"):
        parse([], env)


def test_every_flag_reaches_the_config():
    cfg = parse([
        "--api-key", "k", "--host", "0.0.0.0", "--port", "9000", "--conv-type-id", "a", "--conv-type-id", "b",
        "--profile", "free", "--max-journeys", "50", "--weight-initializer", "1", "--weight-holder", "2",
        "--weight-closer", "3", "--latency-ms", "5", "--error-rate", "0.1", "--rate-limit-every", "4",
        "--retry-after", "2", "--hang-rate", "0.2", "--hang-seconds", "9", "--partial-failure-rate", "0.3",
        "--seed", "11",
    ])
    assert (cfg.host, cfg.port, cfg.conv_type_ids) == ("0.0.0.0", 9000, ("a", "b"))
    assert (cfg.profile, cfg.max_journeys, cfg.max_sessions) == ("free", 50, 200)
    assert (cfg.weights.initializer, cfg.weights.holder, cfg.weights.closer) == (1.0, 2.0, 3.0)
    f = cfg.faults
    assert (f.latency_ms, f.error_rate, f.rate_limit_every, f.retry_after) == (5.0, 0.1, 4, 2)
    assert (f.hang_rate, f.hang_seconds, f.partial_failure_rate, f.seed) == (0.2, 9.0, 0.3, 11)
    assert parse(["--api-key", "k", "--profile", "free", "--max-sessions", "500"]).max_sessions == 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env_keys: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "IHC_API_KEYS"}
    env["PYTHONPATH"] = str(ROOT)
    if env_keys is not None:
        env["IHC_API_KEYS"] = env_keys
    return subprocess.Popen(
        [sys.executable, "-m", "ihc_attribution_dev.server", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_refuses_to_start_without_a_key():
    proc = _start(["--port", str(_free_port())], env_keys=None)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "no API key configured" in err
    assert "--api-key" in err and "IHC_API_KEYS" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runs_in_the_foreground_and_stops_cleanly_on_a_signal(sig):
    port = _free_port()
    secret = "cli-secret-key"
    proc = _start(["--port", str(port), "--conv-type-id", "shop"], env_keys=secret)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(base + "/health", timeout=0.5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)
        r = post(base, {"customer_journeys": journey("c", ["2024-01-01 10:00:00"])}, key=secret, conv_type_id="shop")
        assert r.status_code == 200 and r.headers["X-IHC-Local-Double"] == "true"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "LOCAL DEVELOPMENT DOUBLE, not the real IHC attribution API" in err
    assert "exited cleanly" in err
    assert secret not in err
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/health", timeout=0.5)
