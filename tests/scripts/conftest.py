"""Fixtures of the local runner's tests: a small generated database of September 2023 and the
local IHC server."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ihc_attribution_dev.demo_data import DemoConfig, generate
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve

API_KEY = "runner-test-key-41c2"


@pytest.fixture(scope="module")
def source_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runner-source") / "source.db"
    generate(path, DemoConfig(start=dt.date(2023, 9, 1), end=dt.date(2023, 9, 4), conversions=80,
                              sessions_per_conversion=8, lookback_days=10, seed=5))
    return path


@pytest.fixture(scope="module")
def ihc_conn() -> str:
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        host, port = url.removeprefix("http://").split(":")
        yield json.dumps({"conn_type": "ihc", "host": host, "port": int(port), "schema": "http",
                          "password": API_KEY, "extra": {"conv_type_id": "demo", "max_journeys_per_request": 30}})
