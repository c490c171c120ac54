"""Airflow hook for the IHC attribution API: an Airflow connection -> :class:`IhcClient`.

Shaped like the HTTP provider's ``HttpHook``: the connection is looked up lazily in
:meth:`IhcHook.get_conn` (never in ``__init__``, so DAG files can build the hook at parse time),
the client is cached, and settings live in the connection's extra with sane defaults.

The connection (type ``http``):

* ``host``: ``api.ihc-attribution.com``, or a full URL such as ``http://127.0.0.1:8080``;
* ``schema``: URL scheme when ``host`` has none (default ``https``), as in ``HttpHook``;
* ``port``: optional;
* ``password``: the API key (``login`` is not used);
* ``extra``: see :data:`EXTRA_DEFAULTS`. Values may be strings (URI-form connections deliver
  them that way); they are coerced and checked, and a bad value fails with a message naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests
from airflow.sdk import BaseHook

from include.attribution.ihc_client import (
    IhcClient,
    IhcConfigurationError,
    IhcRequest,
    IhcResult,
    SendProgress,
    SendSummary,
)
from include.attribution.packing import OVERSIZE_POLICIES

#: Extras understood by :class:`IhcHook`, with the value used when an extra is absent.
EXTRA_DEFAULTS: dict[str, Any] = {
    "conv_type_id": "demo",
    "max_journeys_per_request": 100,
    "max_sessions_per_request": 3000,
    "max_concurrency": 4,
    "timeout": 30.0,
    "max_retries": 5,
    "backoff_base": 1.0,
    "backoff_max": 60.0,
    "redistribution_parameter": None,
    "oversized_journey_policy": "truncate",
}
_PHASES = ("initializer", "holder", "closer")


@dataclass(frozen=True)
class IhcLimits:
    """Per-request limits of the IHC API."""

    max_journeys: int
    max_sessions: int


@dataclass(frozen=True)
class IhcSettings:
    """Typed settings of an IHC connection (everything but the API key, so it is safe to log).

    :param base_url: scheme, host and port of the service.
    :param conv_type_id: trained conversion type sent with every request.
    :param max_journeys_per_request: journeys per request (production limit: 100).
    :param max_sessions_per_request: sessions per request (production: 3000; free accounts: 200).
    :param max_concurrency: requests in flight at once.
    :param timeout: connect and read timeout of each attempt, in seconds.
    :param max_retries: retries per request for 429, 5xx, timeouts and connection errors.
    :param backoff_base: first backoff cap in seconds, doubled per retry.
    :param backoff_max: longest wait between attempts (caps ``Retry-After`` too).
    :param redistribution_parameter: optional ``redistribution_parameter`` of the API.
    :param oversized_journey_policy: ``truncate`` or ``skip`` for journeys over the session limit.
    """

    base_url: str
    conv_type_id: str = EXTRA_DEFAULTS["conv_type_id"]
    max_journeys_per_request: int = EXTRA_DEFAULTS["max_journeys_per_request"]
    max_sessions_per_request: int = EXTRA_DEFAULTS["max_sessions_per_request"]
    max_concurrency: int = EXTRA_DEFAULTS["max_concurrency"]
    timeout: float = EXTRA_DEFAULTS["timeout"]
    max_retries: int = EXTRA_DEFAULTS["max_retries"]
    backoff_base: float = EXTRA_DEFAULTS["backoff_base"]
    backoff_max: float = EXTRA_DEFAULTS["backoff_max"]
    redistribution_parameter: dict[str, Any] | None = None
    oversized_journey_policy: str = EXTRA_DEFAULTS["oversized_journey_policy"]

    @property
    def limits(self) -> IhcLimits:
        """The per-request limits, for packing."""
        return IhcLimits(self.max_journeys_per_request, self.max_sessions_per_request)


def build_base_url(host: str | None, schema: str | None = None, port: int | None = None) -> str:
    """Build the service URL from connection fields the way ``HttpHook`` does (default https).

    :param host: host name, or a URL with scheme (and possibly port and path prefix).
    :param schema: scheme used when ``host`` has none: ``http`` or ``https`` (default).
    :param port: appended unless ``host`` already carries a port.
    :raises IhcConfigurationError: when the host is missing or the scheme is not http(s).
    """
    host = (host or "").strip()
    if not host:
        raise IhcConfigurationError("the IHC connection has no host; set it, e.g. api.ihc-attribution.com")
    if "://" not in host:
        scheme = (schema or "https").strip().lower()
        host = f"{scheme}://{host}"
    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https"):
        raise IhcConfigurationError(
            f"the IHC connection must use http or https, got scheme {parsed.scheme!r} "
            "(the connection's schema field is the URL scheme)"
        )
    if port and parsed.port is None:
        host = parsed._replace(netloc=f"{parsed.netloc}:{int(port)}").geturl()
    return host.rstrip("/")


def settings_from_extra(extra: Mapping[str, Any], base_url: str, conn_id: str = "ihc_api") -> IhcSettings:
    """Coerce and check the extras of an IHC connection.

    :param extra: the connection's extra (``extra_dejson``); values may be strings.
    :param base_url: service URL, see :func:`build_base_url`.
    :param conn_id: connection id, for error messages.
    :raises IhcConfigurationError: naming the extra and the expected value.
    """
    unknown = sorted(set(extra) - set(EXTRA_DEFAULTS))
    if unknown:
        # A typo would otherwise silently fall back to a default (e.g. a limit the account lacks).
        raise IhcConfigurationError(
            f"connection {conn_id!r} has unknown extra(s) {', '.join(unknown)}; "
            f"known extras: {', '.join(EXTRA_DEFAULTS)}"
        )

    def get(name: str) -> Any:
        value = extra.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return EXTRA_DEFAULTS[name]
        return value

    def bad(name: str, expected: str) -> IhcConfigurationError:
        return IhcConfigurationError(
            f"connection {conn_id!r}: extra {name} must be {expected}, got {extra.get(name)!r}"
        )

    def integer(name: str, minimum: int) -> int:
        value = get(name)
        if isinstance(value, bool):
            raise bad(name, f"an integer >= {minimum}")
        try:
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)) or number != int(number):
                raise ValueError
            number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise bad(name, f"an integer >= {minimum}") from None
        if number < minimum:
            raise bad(name, f"an integer >= {minimum}")
        return number

    def real(name: str, minimum: float, strict: bool) -> float:
        value = get(name)
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise bad(name, "a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise bad(name, "a finite number")
        if number < minimum or (strict and number == minimum):
            raise bad(name, f"a number {'>' if strict else '>='} {minimum:g}")
        return number

    conv_type_id = str(get("conv_type_id")).strip()

    policy = str(get("oversized_journey_policy")).strip().lower()
    if policy not in OVERSIZE_POLICIES:
        raise bad("oversized_journey_policy", " or ".join(repr(p) for p in OVERSIZE_POLICIES))

    redistribution = get("redistribution_parameter")
    if isinstance(redistribution, str):
        try:
            redistribution = json.loads(redistribution)
        except ValueError:
            raise bad("redistribution_parameter", "a JSON object") from None
    if redistribution is not None:
        if not isinstance(redistribution, dict):
            raise bad("redistribution_parameter", "a JSON object")
        if not set(redistribution) <= set(_PHASES) or not all(
            isinstance(value, dict) for value in redistribution.values()
        ):
            raise bad(
                "redistribution_parameter",
                f"an object with per-phase objects under {', '.join(_PHASES)}",
            )

    backoff_base = real("backoff_base", 0.0, strict=False)
    backoff_max = real("backoff_max", 0.0, strict=False)
    return IhcSettings(
        base_url=base_url,
        conv_type_id=conv_type_id,
        max_journeys_per_request=integer("max_journeys_per_request", 1),
        max_sessions_per_request=integer("max_sessions_per_request", 1),
        max_concurrency=integer("max_concurrency", 1),
        timeout=real("timeout", 0.0, strict=True),
        max_retries=integer("max_retries", 0),
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        redistribution_parameter=redistribution,
        oversized_journey_policy=policy,
    )


class IhcHook(BaseHook):
    """Interact with the IHC attribution API through an Airflow connection.

    :param ihc_conn_id: connection with the service URL, the API key as password and the
        settings as extras (see the module docstring).
    :param sleep: passed to :class:`IhcClient` (tests turn the waits off with it).
    :param session_factory: passed to :class:`IhcClient`.
    """

    conn_name_attr = "ihc_conn_id"
    default_conn_name = "ihc_api"
    conn_type = "http"
    hook_name = "IHC Attribution API"

    def __init__(
        self,
        ihc_conn_id: str = default_conn_name,
        *,
        sleep: Callable[[float], None] | None = None,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        super().__init__()
        self.ihc_conn_id = ihc_conn_id
        self._sleep = sleep
        self._session_factory = session_factory
        self._client: IhcClient | None = None
        self._settings: IhcSettings | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ihc_conn_id={self.ihc_conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return custom field behaviour for the connection form."""
        return {
            "hidden_fields": ["login"],
            "relabeling": {"password": "API key", "schema": "Scheme (http or https)"},
            "placeholders": {
                "host": "api.ihc-attribution.com",
                "schema": "https",
                "password": "IHC API key",
                "extra": json.dumps(
                    {key: value for key, value in EXTRA_DEFAULTS.items() if value is not None}, indent=2
                ),
            },
        }

    def get_conn(self) -> IhcClient:
        """Read the connection (first call only) and return the cached :class:`IhcClient`.

        :raises IhcConfigurationError: when the connection lacks a host or key or has bad extras.
        """
        if self._client is None:
            connection = self.get_connection(self.ihc_conn_id)
            base_url = build_base_url(connection.host, connection.schema, connection.port)
            settings = settings_from_extra(connection.extra_dejson, base_url, self.ihc_conn_id)
            if not connection.password:
                raise IhcConfigurationError(
                    f"connection {self.ihc_conn_id!r} has no password; set the IHC API key as its password"
                )
            options: dict[str, Any] = {}
            if self._sleep is not None:
                options["sleep"] = self._sleep
            if self._session_factory is not None:
                options["session_factory"] = self._session_factory
            self._client = IhcClient(
                settings.base_url,
                connection.password,
                settings.conv_type_id,
                timeout=settings.timeout,
                max_concurrency=settings.max_concurrency,
                max_retries=settings.max_retries,
                backoff_base=settings.backoff_base,
                backoff_max=settings.backoff_max,
                redistribution_parameter=settings.redistribution_parameter,
                **options,
            )
            self._settings = settings
            self.log.info(
                "IHC API at %s, conv_type_id %r, limits %d journeys / %d sessions per request, "
                "%d concurrent, %d retries",
                settings.base_url,
                settings.conv_type_id,
                settings.max_journeys_per_request,
                settings.max_sessions_per_request,
                settings.max_concurrency,
                settings.max_retries,
            )
        return self._client

    @property
    def settings(self) -> IhcSettings:
        """Typed settings of the connection (reads the connection on first use)."""
        if self._settings is None:
            self.get_conn()
        assert self._settings is not None
        return self._settings

    @property
    def limits(self) -> IhcLimits:
        """Per-request limits from the connection's extras."""
        return self.settings.limits

    def compute_ihc(
        self,
        requests: Iterable[IhcRequest],
        on_result: Callable[[IhcResult], None],
        *,
        progress: Callable[[SendProgress], None] | None = None,
        total: int | None = None,
    ) -> SendSummary:
        """Send packed requests and deliver each validated answer; see :meth:`IhcClient.send_all`.

        :param requests: requests of whole journeys within :attr:`limits`.
        :param on_result: called in the calling thread with each :class:`IhcResult`.
        :param progress: called in the calling thread after each finished request.
        :param total: number of requests, for progress reports.
        :return: counters of the run.
        """
        return self.get_conn().send_all(requests, on_result, progress=progress, total=total)

    def close(self) -> None:
        """Close the client's HTTP sessions (the next call re-creates them)."""
        if self._client is not None:
            self._client.close()

    def test_connection(self) -> tuple[bool, str]:
        """Send a one-journey request and report whether a valid answer came back."""
        request = IhcRequest(
            request_id="connection-test",
            rows=[
                {
                    "conversion_id": "connection-test",
                    "session_id": "connection-test-session",
                    "timestamp": "2024-01-01 12:00:00",
                    "channel_label": "Direct Traffic",
                    "holder_engagement": 1,
                    "closer_engagement": 1,
                    "conversion": 1,
                    "impression_interaction": 0,
                }
            ],
        )
        try:
            result = self.get_conn().send_one(request)
        except Exception as error:
            return False, f"{type(error).__name__}: {error}"
        if result.failed:
            return False, f"the test journey failed at the service: {result.failed[0].message}"
        source = " (local IHC double)" if result.local_double else ""
        return True, (
            f"IHC API at {self.settings.base_url}{source} attributed a test journey for conv_type_id "
            f"{self.settings.conv_type_id!r} (statusCode {result.status_code})"
        )
