"""Fixtures of the local IHC double tests: one shared server with the default contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.ihc_attribution_dev.server.helpers import KEY


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """A server with default limits, keys ``KEY`` and ``test-key-2``, conv types ``demo`` and ``other``."""
    config = ServerConfig(api_keys=(KEY, "test-key-2"), conv_type_ids=("demo", "other"))
    with serve(config) as url:
        yield url


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A keep-alive HTTP session."""
    with requests.Session() as session:
        yield session
