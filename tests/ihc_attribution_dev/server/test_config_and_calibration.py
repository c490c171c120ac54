"""ServerConfig validation, serve() itself, and the model against the real reference answers."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import requests

from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.model import FITTED_PARAMS
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution_dev.server.helpers import KEY

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"api_keys": ()}, "no API key configured"),
        ({"api_keys": ("",)}, "no API key configured"),
        ({"api_keys": ("k",), "conv_type_ids": ()}, "conv_type_ids"),
        ({"api_keys": ("k",), "profile": "gold"}, "unknown profile"),
        ({"api_keys": ("k",), "max_journeys": 0}, "max_journeys"),
        ({"api_keys": ("k",), "max_sessions": "10"}, "max_sessions"),
    ],
)
def test_server_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(**kwargs)


def test_server_config_profiles_and_normalisation():
    assert ServerConfig(api_keys=["k"]).api_keys == ("k",)
    assert ServerConfig(api_keys="k").api_keys == ("k",)
    free = ServerConfig(api_keys=("k",), profile="free")
    assert (free.max_journeys, free.max_sessions) == (100, 200)
    assert ServerConfig(api_keys=("k",), profile="free", max_sessions=300).max_sessions == 300


def test_serve_starts_fast_and_releases_the_port():
    started = time.perf_counter()
    with serve(ServerConfig(api_keys=(KEY,))) as url:
        assert time.perf_counter() - started < 1.0
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/health", timeout=2).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=1)


def test_two_servers_are_independent():
    with serve(ServerConfig(api_keys=("a",))) as one, serve(ServerConfig(api_keys=("b",))) as two:
        assert one != two
        requests.get(one + "/health")
        requests.post(one + "/v1/compute_ihc?conv_type_id=demo", json={}, headers={"x-api-key": "a"})
        assert requests.get(one + "/stats").json()["requests"] == 1
        assert requests.get(two + "/stats").json()["requests"] == 0


def _calibration_module():
    spec = importlib.util.spec_from_file_location("calibrate_ihc_model", ROOT / "scripts" / "calibrate_ihc_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_model_beats_the_baselines_on_the_real_answers(capsys):
    script = _calibration_module()
    cal = script.cal
    if not script.DEFAULT_REFERENCE.is_file():
        pytest.skip(f"reference answers not found at {script.DEFAULT_REFERENCE}")
    journeys = cal.load_answers(script.DEFAULT_REFERENCE)
    multi = [j for j in journeys if len(j.touchpoints) > 1]
    assert (len(journeys), len(multi)) == (1925, 787)
    model = cal.mae(multi, cal.model_method(FITTED_PARAMS))
    linear = cal.mae(multi, cal.linear)
    last = cal.mae(multi, cal.last_touch)
    assert model < 0.005
    assert model < linear / 10 and model < last / 10
    # Single-session journeys are exact.
    singles = [j for j in journeys if len(j.touchpoints) == 1]
    assert cal.mae(singles, cal.model_method(FITTED_PARAMS)) == 0.0

    assert script.main([]) == 0
    table = capsys.readouterr().out
    assert "| linear (1/n) |" in table and "| last touch |" in table and "787 with 2+ sessions" in table

