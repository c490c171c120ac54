"""Airflow hook for the IHC attribution API: an Airflow connection -> :class:`IhcClient`.

Shaped like ``HttpHook``: the connection (type ``ihc``; ``http`` still read, with a warning) is read
lazily in :meth:`IhcHook.get_conn`, never in ``__init__``. Host, schema and port make the URL, the
password is the API key, the extras are the fields of ``IhcSettings`` (docs/ihc_hook.md); the
connection form comes from the provider's metadata (:mod:`ihc_attribution.provider`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import BaseHook

from ihc_attribution.ihc.answers import IhcRequest
from ihc_attribution.ihc.client import IhcClient, SendSummary
from ihc_attribution.ihc.errors import IhcConfigurationError
from ihc_attribution.ihc.settings import IhcSettings, clean_api_key, parse_settings
from ihc_attribution.provider import CONN_TYPE


def build_base_url(host: str | None, schema: str | None = None, port: int | None = None) -> str:
    """Build the service URL from connection fields the way ``HttpHook`` does: ``host`` may be a URL (it wins),
    ``schema`` is the scheme (default https), ``port`` is appended unless ``host`` has one.

    :raises IhcConfigurationError: when the host is missing or the scheme is not http(s).
    """
    host = (host or "").strip()
    if not host:
        raise IhcConfigurationError("the IHC connection has no host; set it, e.g. api.ihc-attribution.com")
    if "://" not in host:
        host = f"{(schema or 'https').strip().lower()}://{host}"
    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https"):
        raise IhcConfigurationError(
            f"the IHC connection must use http or https, got scheme {parsed.scheme!r} "
            "(the connection's schema field is the URL scheme)"
        )
    if port and parsed.port is None:
        host = parsed._replace(netloc=f"{parsed.netloc}:{int(port)}").geturl()
    return host.rstrip("/")


class IhcHook(BaseHook):
    """Interact with the IHC attribution API through an Airflow connection.

    :param ihc_conn_id: the connection (see the module docstring).
    :param max_concurrency: requests in flight (the DAG passes its pool slots); a smaller
        ``max_concurrency`` in the connection's extra still caps it.
    :param sleep: waits between attempts, passed to :class:`IhcClient` (tests turn them off).
    """

    conn_name_attr = "ihc_conn_id"
    default_conn_name = "ihc_api"
    conn_type = CONN_TYPE
    hook_name = "IHC Attribution API"

    def __init__(self, ihc_conn_id: str = default_conn_name, *, max_concurrency: int | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self.ihc_conn_id = ihc_conn_id
        self.max_concurrency = max_concurrency
        self._sleep = sleep
        self._client: IhcClient | None = None

    def get_conn(self) -> IhcClient:
        """Read the connection (first call only) and return the cached :class:`IhcClient`; IhcConfigurationError
        when the connection lacks a host or key or has bad extras."""
        if self._client is None:
            connection = self.get_connection(self.ihc_conn_id)
            where = f"connection {self.ihc_conn_id!r}"
            if connection.conn_type != CONN_TYPE:
                self.log.warning("%s has conn_type %r: this is deprecated, change its conn_type to %r",
                                 where, connection.conn_type, CONN_TYPE)
            # Extras saved by a connection form may carry the type as a prefix.
            extra = {name.rpartition("__")[2]: value for name, value in connection.extra_dejson.items()}
            base_url = build_base_url(connection.host, connection.schema, connection.port)
            settings = parse_settings({"base_url": base_url, **extra}, where)
            settings = self._with_concurrency(settings, "max_concurrency" in extra, where)
            clean_api_key(connection.password, where)
            self._client = IhcClient(api_key=connection.password, sleep=self._sleep, **settings.model_dump())
            self.log.info(
                "IHC API at %s, conv_type_id %r, limits %d journeys / %d sessions per request, "
                "%d concurrent, %d retries, timeout %g s",
                settings.base_url, settings.conv_type_id, settings.max_journeys_per_request,
                settings.max_sessions_per_request, settings.max_concurrency, settings.max_retries, settings.timeout,
            )
        return self._client

    def _with_concurrency(self, settings: IhcSettings, capped: bool, where: str) -> IhcSettings:
        """The connection's settings with this hook's ``max_concurrency``, capped by the connection's own."""
        if self.max_concurrency is None:
            return settings
        if capped and settings.max_concurrency < self.max_concurrency:
            self.log.warning("%s caps requests in flight at its max_concurrency %d, below the %d pool slots the "
                             "task holds: set ihc_concurrency to %d instead", where, settings.max_concurrency,
                             self.max_concurrency, settings.max_concurrency)
            return settings
        return settings.model_copy(update={"max_concurrency": self.max_concurrency})

    @property
    def settings(self) -> IhcSettings:
        """Typed settings of the connection (reads the connection on first use)."""
        return self.get_conn().settings

    def compute_ihc(self, *args: Any, **kwargs: Any) -> SendSummary:
        """Send packed requests and deliver each validated answer: :meth:`IhcClient.compute_ihc`, same arguments."""
        return self.get_conn().compute_ihc(*args, **kwargs)

    @contextmanager
    def stop_on_sigterm(self) -> Iterator[None]:
        """Within the block, SIGTERM (how Airflow cancels a task) first stops this hook's requests, then runs
        the previous handler. Outside the main thread this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: Any) -> None:
            if self._client is not None:
                self._client.cancel()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def close(self) -> None:
        """Close the client's HTTP session (the next call opens a new one)."""
        if self._client is not None:
            self._client.close()

    def test_connection(self) -> tuple[bool, str]:
        """Send a one-journey request and report whether a valid answer came back."""
        row = {"conversion_id": "connection-test", "session_id": "connection-test-session",
               "timestamp": "2024-01-01 12:00:00", "channel_label": "Direct Traffic", "holder_engagement": 1,
               "closer_engagement": 1, "conversion": 1, "impression_interaction": 0}
        try:
            result = self.get_conn().send_one(IhcRequest("connection-test", [row]))
        except Exception as error:
            return False, f"{type(error).__name__}: {error}"
        if result.failed:
            return False, f"the test journey failed at the service: {result.failed[0].message}"
        source = " (local IHC double)" if result.local_double else ""
        return True, (f"IHC API at {self.settings.base_url}{source} attributed a test journey for conv_type_id "
                      f"{self.settings.conv_type_id!r} (statusCode {result.status_code})")
