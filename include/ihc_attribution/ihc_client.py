"""HTTP client for the IHC attribution API (``POST /v1/compute_ihc``), without Airflow.

:class:`IhcClient` sends packed requests concurrently over one ``requests`` session, retries
with ``tenacity`` what is worth retrying, and checks every answer against the API contract before
handing it over: every session sent comes back exactly once (except those of journeys the service
reports as failed), every credit is in [0, 1] and the ``ihc`` of every journey sums to 1.

Failure handling, by kind:

* **transient** (HTTP 429, 500, 502, 503, 504, timeouts, connection errors): retried up to
  ``max_retries`` times with exponential backoff and full jitter, honouring ``Retry-After``
  (capped at ``backoff_max``). Each attempt, connection and whole answer included, ends after
  ``timeout`` seconds. When one request runs out of retries (or the task is cancelled) no new
  request is started, the requests in flight finish their current attempt and their answers are
  delivered, then :class:`IhcRetriesExhaustedError` (or :class:`IhcCancelledError`) lists the
  requests left unanswered.
* **permanent** (:class:`IhcPermanentError`): the same request would fail the same way, so it is
  raised at once, no new request is sent and the task must not be retried.
  :class:`IhcConfigurationError` for HTTP 400, 401, 403, 404, 413, other 4xx, redirects, TLS
  errors and bad settings; :class:`IhcContractError` for an answer that breaks the contract (not
  JSON, rows missing, duplicated or unknown, credit out of range, sums off, a 5xx other than the
  transient ones) and :class:`IhcResponseTooLargeError` for an answer over the size cap.

Exception and log messages never contain the API key in any form (as given, stripped, escaped or
URL-encoded): they are built from status codes, ids and redacted excerpts of response bodies,
never from headers or ``requests`` objects.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, quote_plus, urlparse

import requests
import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ihc_attribution.errors import PermanentError

log = logging.getLogger(__name__)

ENDPOINT = "/v1/compute_ihc"
#: Statuses worth another attempt: rate limiting and transient server or gateway failures.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Body ``statusCode`` values of a usable answer: full success and partial success.
SUCCESS_STATUSES = frozenset({200, 206})
#: How far a credit may stray from [0, 1], and a journey's ihc sum from 1 (4-decimal rounding).
SUM_TOLERANCE = 1e-6
#: Header set by the project's local IHC double on every answer.
LOCAL_DOUBLE_HEADER = "X-IHC-Local-Double"
#: Answer size cap when ``max_response_bytes`` is not set: 1 MiB plus 4 bytes per byte sent.
DEFAULT_RESPONSE_BASE_BYTES = 1 << 20
DEFAULT_RESPONSE_BYTES_PER_SENT_BYTE = 4

_VALUE_COLUMNS = ("initializer", "holder", "closer", "ihc")
_MAX_EXAMPLES = 5
_MAX_BODY_EXCERPT = 300
_CHUNK = 64 * 1024


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class IhcError(Exception):
    """Base class of the errors of the IHC API stage.

    :param message: what happened and what to change.
    :param status_code: HTTP status (or body ``statusCode``), ``None`` for errors before an answer.
    :param request_id: the request concerned, if one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, request_id: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id


class IhcPermanentError(IhcError, PermanentError):
    """Retrying cannot change the outcome: fail without a retry (the task is not retried either)."""


class IhcConfigurationError(IhcPermanentError):
    """Settings, key, conv type or limits are wrong, or the service refused the request for it."""


class IhcContractError(IhcPermanentError):
    """An answer broke the API contract (shape, completeness, credit range, sums)."""


class IhcResponseTooLargeError(IhcContractError):
    """An answer was larger (decoded) than the cap for its request."""


class IhcRejectedJourneysError(IhcPermanentError):
    """The service rejected at least ``max_rejected_share`` of the journeys sent."""


class IhcRetriesExhaustedError(IhcError):
    """Requests stayed unanswered after all retries; answered ones were delivered before.

    :param request_ids: ids of the requests sent but not answered (those that ran out of retries
        and those stopped because of them). Requests never sent are not listed.
    :param last_errors: request id -> last transient problem seen for it.
    :param summary: counters of the whole call.
    """

    def __init__(
        self,
        message: str,
        *,
        request_ids: Sequence[Any],
        last_errors: Mapping[Any, str],
        summary: SendSummary | None = None,
    ):
        super().__init__(message)
        self.request_ids = list(request_ids)
        self.last_errors = dict(last_errors)
        self.summary = summary


class IhcCancelledError(IhcRetriesExhaustedError):
    """The task was cancelled: no new request or retry was sent after it."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

PositiveInt = Annotated[int, Field(ge=1)]


class IhcSettings(BaseModel):
    """Settings of an IHC connection: everything but the API key, so it is safe to log.

    Built from the connection's extra (see :func:`parse_settings`); values may be strings, as the
    URI form of connections delivers them, and blank values mean "not set".
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: scheme, host and port of the service (a trailing ``/v1/compute_ihc`` is accepted).
    base_url: str
    #: trained conversion type sent with every request; required.
    conv_type_id: Annotated[str, Field(min_length=1)]
    #: journeys per request (production limit: 100).
    max_journeys_per_request: PositiveInt = 100
    #: sessions per request (production: 3000; free accounts: 200).
    max_sessions_per_request: PositiveInt = 3000
    #: requests in flight at once.
    max_concurrency: PositiveInt = 4
    #: seconds one attempt may take, from connecting to the last byte of the answer.
    timeout: Annotated[float, Field(gt=0)] = 30.0
    #: retries per request for 429, 5xx, timeouts and connection errors.
    max_retries: Annotated[int, Field(ge=0)] = 5
    #: first backoff cap in seconds, doubled per retry.
    backoff_base: Annotated[float, Field(ge=0)] = 1.0
    #: longest wait between attempts (caps ``Retry-After`` too).
    backoff_max: Annotated[float, Field(ge=0)] = 60.0
    #: largest answer accepted, decoded; default 1 MiB + 4 x the request body.
    max_response_bytes: PositiveInt | None = None
    #: fail the task when this share of the journeys sent (or more) is rejected by the service.
    max_rejected_share: Annotated[float, Field(gt=0, le=1)] = 1.0
    #: the API's optional ``redistribution_parameter``.
    redistribution_parameter: dict[Literal["initializer", "holder", "closer"], dict[str, Any]] | None = None
    #: what to do with journeys over ``max_sessions_per_request``.
    oversized_journey_policy: Literal["truncate", "skip"] = "truncate"

    @model_validator(mode="before")
    @classmethod
    def _unset_blanks(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v.strip() if isinstance(v, str) else v for k, v in data.items()
                    if v is not None and not (isinstance(v, str) and not v.strip())}
        return data

    @field_validator("max_journeys_per_request", "max_sessions_per_request", "max_concurrency",
                     "max_retries", "max_response_bytes", "timeout", "backoff_base", "backoff_max",
                     "max_rejected_share", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        return value

    @field_validator("redistribution_parameter", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON object") from None
        return value

    @field_validator("oversized_journey_policy", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL with a host")
        return value.rstrip("/")

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        return self.base_url if self.base_url.endswith(ENDPOINT) else self.base_url + ENDPOINT


#: Extras understood in an IHC connection.
KNOWN_EXTRAS = tuple(name for name in IhcSettings.model_fields if name != "base_url")


def parse_settings(values: Mapping[str, Any], where: str = "the IHC connection") -> IhcSettings:
    """Validate settings once, with messages naming each bad extra.

    :param values: ``base_url`` and the connection's extras.
    :param where: what holds the settings, for messages (e.g. ``connection 'ihc_api'``).
    :raises IhcConfigurationError: naming every bad, missing or unknown extra.
    """
    try:
        return IhcSettings.model_validate(dict(values))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown extra {name} (known extras: {', '.join(KNOWN_EXTRAS)})")
            elif error["type"] == "missing":
                problems.append(f"extra {name} is required and must not be empty")
            else:
                shown = repr(error.get("input"))
                shown = shown if len(shown) <= 80 else shown[:80] + "..."
                problems.append(f"extra {name}: {error['msg']}, got {shown}")
        raise IhcConfigurationError(f"{where}: " + "; ".join(problems)) from None


def clean_api_key(raw: str | None, where: str = "the IHC connection") -> str:
    """The key without surrounding whitespace; refuse an empty one or one with inner blanks.

    :raises IhcConfigurationError: with a message that never contains the key.
    """
    key = (raw or "").strip()
    if not key:
        raise IhcConfigurationError(f"{where} has no API key; set the IHC API key as its password")
    if any(char.isspace() or not char.isprintable() for char in key):
        raise IhcConfigurationError(
            f"the API key of {where} contains whitespace or control characters inside it; "
            "paste the key again as the connection's password"
        )
    return key


class Redactor:
    """Masks every form of a secret in a text: as given, stripped, escaped and URL-encoded."""

    def __init__(self, secret: str) -> None:
        forms = {secret, secret.strip(), repr(secret)[1:-1], json.dumps(secret)[1:-1],
                 quote(secret, safe=""), quote_plus(secret)}
        forms |= {form.strip() for form in forms}
        self._forms = sorted((form for form in forms if form), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        return text


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IhcRequest:
    """One API request: the rows of whole journeys, as the API expects them.

    :param request_id: caller's id of the request (e.g. its checkpoint key); unique per call.
    :param rows: ``conversion_id``, ``session_id``, ``timestamp``, ``channel_label``,
        ``holder_engagement``, ``closer_engagement``, ``conversion``, ``impression_interaction``.
    """

    request_id: str | int
    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class IhcRow:
    """Credit of one session in one journey; ids are the values that were sent (same types)."""

    conversion_id: Any
    session_id: Any
    initializer: float
    holder: float
    closer: float
    ihc: float


@dataclass(frozen=True)
class PartialFailure:
    """A journey the service could not attribute (listed in ``partialFailureErrors``)."""

    conversion_id: Any
    message: str


@dataclass(frozen=True)
class IhcResult:
    """A validated answer to one request.

    :param rows: one row per session sent, except sessions of failed journeys.
    :param failed: journeys the service reported as failed; they have no rows.
    :param attempts: HTTP attempts it took (1 = no retry).
    :param status_code: ``statusCode`` of the answer: 200, or 206 with failed journeys.
    :param local_double: the answer came from the project's local IHC double, not production.
    """

    request_id: str | int
    rows: list[IhcRow]
    failed: list[PartialFailure]
    attempts: int
    status_code: int
    local_double: bool = False


@dataclass(frozen=True)
class SendProgress:
    """Progress of a call, reported after each finished request."""

    done: int
    total: int | None
    retries: int
    journeys_answered: int
    journeys_rejected: int
    elapsed_seconds: float


@dataclass
class SendSummary:
    """Counters of the API stage (one call of :meth:`IhcClient.compute_ihc`, plus checkpoints).

    :param requests_total: requests planned for the run (set by the API stage).
    :param requests_already_done: of those, answered before this call (set by the API stage).
    :param requests_sent: requests sent in this call (at least one attempt started).
    :param requests_answered: requests answered and delivered.
    :param attempts: HTTP attempts over all requests.
    :param retries: attempts beyond the first, over all requests.
    :param rows: result rows delivered.
    :param journeys_answered: journeys in delivered answers, rejected ones included.
    :param journeys_rejected: journeys the service reported as failed (``partialFailureErrors``).
    :param unanswered: ids of the requests left without an answer.
    :param local_double: at least one answer came from the local IHC double.
    """

    requests_total: int = 0
    requests_already_done: int = 0
    requests_sent: int = 0
    requests_answered: int = 0
    attempts: int = 0
    retries: int = 0
    rows: int = 0
    journeys_answered: int = 0
    journeys_rejected: int = 0
    elapsed_seconds: float = 0.0
    unanswered: list[Any] = field(default_factory=list)
    local_double: bool = False

    @property
    def requests_failed(self) -> int:
        """Requests left without an answer."""
        return len(self.unanswered)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds (>= 0), ``None`` if unusable.

    :param value: header value: delay in seconds or an HTTP date.
    :param now: current time for HTTP dates (default: now, UTC).
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _key(value: Any) -> str:
    # JSON may bring ids back as strings even if they were sent as numbers; compare as text.
    return str(value)


def _examples(items: Iterable[Any]) -> str:
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:_MAX_EXAMPLES])
    return shown + (f" and {len(items) - _MAX_EXAMPLES} more" if len(items) > _MAX_EXAMPLES else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Transient(Exception):
    """A failed attempt worth retrying."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class _Stopped(Exception):
    """No further attempt: another request gave up, or the task was cancelled."""


@dataclass
class _Prepared:
    """A request ready to send: serialised body and the sessions to expect back."""

    request: IhcRequest
    body: bytes
    # str(conversion_id) -> {str(session_id): (conversion_id, session_id) as sent}
    journeys: dict[str, dict[str, tuple[Any, Any]]]


# --- a deadline over the whole attempt ----------------------------------------------------------
# requests' timeout bounds each wait for bytes, not the attempt: a server trickling one byte per
# second would hold a worker for ever. The pools below note which connection the current thread
# uses, so that a timer can shut its socket when the attempt's time is up, whatever phase it is in.

_current = threading.local()


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.conn: Any = None
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = None

    def _expire(self) -> None:
        self.expired = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _NotingPool:
    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.conn = conn
        return conn


class _HTTPPool(_NotingPool, HTTPConnectionPool):
    pass


class _HTTPSPool(_NotingPool, HTTPSConnectionPool):
    pass


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def make_session(max_concurrency: int) -> requests.Session:
    """A session with a connection per worker and no urllib3 retries (tenacity retries)."""
    session = requests.Session()
    adapter = _Adapter(pool_connections=1, pool_maxsize=max_concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _read_environment_once(session: requests.Session, url: str) -> dict[str, Any]:
    """Read what ``requests`` takes from the environment for ``url`` once, and stop it reading it again.

    With ``trust_env`` a session looks up proxies (walking the whole environment), the CA bundle
    and ``.netrc`` on every request: about a millisecond of CPU each time in a worker's
    environment. The values are the same for every request to one URL, so they are read here and
    passed with each request, and the session's ``trust_env`` is turned off.
    """
    if not session.trust_env:
        return {}
    merged = session.merge_environment_settings(url, {}, None, None, None)
    environment: dict[str, Any] = {"proxies": merged["proxies"], "verify": merged["verify"], "cert": merged["cert"]}
    if session.auth is None:
        netrc_auth = requests.utils.get_netrc_auth(url)
        if netrc_auth:
            environment["auth"] = netrc_auth
    session.trust_env = False
    return environment


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class IhcClient:
    """Send customer journeys to the IHC API, concurrently, with retries and answer checks.

    :param base_url: scheme, host and port of the service, e.g. ``https://api.ihc-attribution.com``.
    :param api_key: sent as header ``x-api-key``, stripped; never logged.
    :param conv_type_id: trained conversion type, query parameter ``conv_type_id``.
    :param sleep: waits between attempts; tests inject a no-op. By default the waits end early
        when the call stops (a request gave up, a permanent error, :meth:`cancel`).
    :param session: the ``requests.Session`` to use (default: :func:`make_session`).
    :param settings: the other fields of :class:`IhcSettings` (``timeout``, ``max_retries``, ...).
    :raises IhcConfigurationError: for a bad setting or key.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        conv_type_id: str,
        *,
        sleep: Callable[[float], None] | None = None,
        session: requests.Session | None = None,
        **settings: Any,
    ) -> None:
        self.settings = parse_settings({"base_url": base_url, "conv_type_id": conv_type_id, **settings}, "IhcClient")
        self.url = self.settings.url
        self._api_key = clean_api_key(api_key)
        self._redact = Redactor(api_key)
        self._sleep = sleep
        self._session = session
        # Proxies, CA bundle and .netrc credentials from the environment, read once for a session
        # of this client's own; empty for a caller's session, which requests reads per request.
        self._environment: dict[str, Any] = {}
        self._stop = threading.Event()
        self._cancelled = False
        self._lock = threading.Lock()
        self._attempts = self._retries = 0

    def __repr__(self) -> str:
        s = self.settings
        return f"{type(self).__name__}(url={self.url!r}, conv_type_id={s.conv_type_id!r}, max_concurrency={s.max_concurrency})"

    def __enter__(self) -> IhcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session (the next request opens a new one)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def cancel(self) -> None:
        """Stop at once: no new request, no retry, waits cut short (e.g. the task was killed)."""
        self._cancelled = True
        self._stop.set()

    # ----------------------------------------------------------------------------- public API

    def send_one(self, request: IhcRequest) -> IhcResult:
        """Send one request (with retries) and return its validated answer.

        :raises IhcPermanentError: for an answer retrying cannot fix.
        :raises IhcRetriesExhaustedError: when all attempts failed transiently.
        """
        results: list[IhcResult] = []
        self.compute_ihc([request], results.append)
        return results[0]

    def compute_ihc(
        self,
        requests: Iterable[IhcRequest],
        on_result: Callable[[IhcResult], None],
        *,
        progress: Callable[[SendProgress], None] | None = None,
        total: int | None = None,
        summary: SendSummary | None = None,
    ) -> SendSummary:
        """Send requests concurrently and deliver each validated answer as it arrives.

        ``requests`` is consumed lazily, in the calling thread, never more than
        ``max_concurrency`` + 1 ahead of the answers, so it may be a generator reading from a
        database: while the workers wait, the next request is built and serialised, and it goes
        out as soon as a worker is free, before the answers that came in go through
        ``on_result`` (those that follow are built and sent after them; with ``max_concurrency``
        1 it waits for them). ``on_result`` and
        ``progress`` are called in the calling thread too (so they may write to SQLite), in
        completion order.

        :param requests: the requests; ids must be unique.
        :param on_result: receives each :class:`IhcResult`; an exception from it stops the call.
        :param progress: receives a :class:`SendProgress` after each finished request.
        :param total: number of requests, for progress (default: ``len(requests)`` if sized).
        :param summary: counters to fill in, so the caller has them even when this raises.
        :raises IhcPermanentError: at the first answer retrying cannot fix; requests in flight
            are abandoned, no new one is sent.
        :raises IhcRetriesExhaustedError: after the requests in flight have been delivered, when
            some stayed unanswered (:class:`IhcCancelledError` after :meth:`cancel`).
        :raises ValueError: for a malformed request (duplicate id, no rows, duplicate session).
        """
        if total is None and hasattr(requests, "__len__"):
            total = len(requests)  # type: ignore[arg-type]
        summary = summary if summary is not None else SendSummary()
        started = time.monotonic()
        self._stop = stop = threading.Event()
        if self._cancelled:
            stop.set()
        self._attempts = self._retries = 0
        if self._session is None:
            self._session = make_session(self.settings.max_concurrency)
            self._environment = _read_environment_once(self._session, self.url)
        last_errors: dict[Any, str] = {}
        seen: set[Any] = set()
        in_flight: dict[Future[IhcResult], Any] = {}
        pending = iter(requests)
        done_count = 0
        executor = ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix="ihc-client")
        # Once answers come in, the next request is built (read and serialised) while the workers
        # wait, and a freed worker gets it at once, while the answers are stored: storing them
        # takes the calling thread a few milliseconds each, which would otherwise add to every
        # round trip. Other requests go out only after the answers are delivered, so a crash
        # while storing them loses at most that one request's answer besides (as it loses those
        # of all requests in flight); the re-run sends the unanswered requests again. With
        # max_concurrency 1 nothing goes out before the previous answer is stored: a crash then
        # never costs a request that was answered.
        early = self.settings.max_concurrency > 1
        ahead: _Prepared | ValueError | None = None
        exhausted = False

        def build_next() -> _Prepared | ValueError | None:
            nonlocal exhausted
            if exhausted:
                return None
            request = next(pending, None)
            if request is None:
                exhausted = True
                return None
            try:
                if request.request_id in seen:
                    raise ValueError(f"duplicate request id {request.request_id!r}")
                seen.add(request.request_id)
                return self._prepare(request)
            except ValueError as exc:  # raised when the request's turn to be sent comes
                exhausted = True
                return exc

        def send_next() -> bool:
            nonlocal ahead
            if stop.is_set() or len(in_flight) >= self.settings.max_concurrency:
                return False
            prepared, ahead = (ahead, None) if ahead is not None else (build_next(), None)
            if prepared is None:
                return False
            if isinstance(prepared, ValueError):
                raise prepared
            in_flight[executor.submit(self._run_one, prepared)] = prepared.request.request_id
            summary.requests_sent += 1
            return True

        clean = False
        try:
            while True:
                while send_next():
                    pass
                if not in_flight:
                    break
                if ahead is None and done_count and not stop.is_set():  # once answers come in
                    ahead = build_next()
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                finished = [(f, in_flight.pop(f)) for f in list(in_flight) if f in done]  # submission order
                if early and ahead is not None and not stop.is_set() and not any(f.exception() for f, _ in finished):
                    send_next()
                for future, request_id in finished:
                    done_count += 1
                    try:
                        result = future.result()
                    except _Transient as problem:  # gave up (retries exhausted or stopped)
                        summary.unanswered.append(request_id)
                        last_errors[request_id] = problem.problem
                        if not stop.is_set():
                            log.error("IHC request %r not answered after %d retries (%s); sending no new "
                                      "requests, waiting for %d in flight.", request_id,
                                      self.settings.max_retries, problem.problem, len(in_flight))
                        stop.set()  # requests in flight finish their current attempt, no retry
                    else:
                        self._deliver(result, on_result, summary)
                    if progress is not None:
                        progress(SendProgress(done_count, total, self._retries, summary.journeys_answered,
                                              summary.journeys_rejected, time.monotonic() - started))
            clean = True
        except BaseException:
            stop.set()
            raise
        finally:
            # After a permanent error do not wait for the requests in flight: their answers
            # cannot be used, and the workers stop before their next attempt.
            executor.shutdown(wait=clean, cancel_futures=True)
            summary.retries += self._retries
            summary.attempts += self._attempts
            summary.elapsed_seconds += time.monotonic() - started
        if summary.unanswered:
            ids = summary.unanswered
            kind = IhcCancelledError if self._cancelled else IhcRetriesExhaustedError
            reason = "the task was cancelled" if self._cancelled else f"up to {self.settings.max_retries} retries"
            raise kind(
                f"{len(ids)} IHC request(s) not answered after {reason}: {_examples(ids)}; last error: "
                f"{last_errors[ids[0]]}. {summary.requests_answered} answered request(s) were delivered; "
                "requests after the failure were not sent.",
                request_ids=ids, last_errors=last_errors, summary=summary,
            )
        return summary

    # ------------------------------------------------------------------------------- internals

    def _deliver(self, result: IhcResult, on_result: Callable[[IhcResult], None], summary: SendSummary) -> None:
        if result.local_double and not summary.local_double:
            log.warning("Answers come from the local IHC double (header %s), not from the production "
                        "IHC service: point the connection at the real API for production numbers.",
                        LOCAL_DOUBLE_HEADER)
        on_result(result)
        summary.requests_answered += 1
        summary.rows += len(result.rows)
        summary.journeys_answered += len({_key(r.conversion_id) for r in result.rows}) + len(result.failed)
        summary.journeys_rejected += len(result.failed)
        summary.local_double |= result.local_double

    def _run_one(self, prepared: _Prepared) -> IhcResult:
        """Send one request until answered; raise _Transient when giving up, or a permanent error."""
        attempts, last_problem, s = 0, "", self.settings

        def attempt() -> IhcResult:
            nonlocal attempts, last_problem
            if self._stop.is_set():
                raise _Stopped
            attempts += 1
            with self._lock:
                self._attempts += 1
            try:
                return self._attempt(prepared, attempts)
            except _Transient as problem:
                last_problem = problem.problem
                raise

        def wait_time(state: tenacity.RetryCallState) -> float:
            retry_after = getattr(state.outcome.exception(), "retry_after", None)
            return min(retry_after, s.backoff_max) if retry_after is not None else jitter(state)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            with self._lock:
                self._retries += 1
            log.warning("IHC request %r: %s; retry %d/%d in %.2f s", prepared.request.request_id,
                        state.outcome.exception().problem, state.attempt_number, s.max_retries,
                        state.next_action.sleep)

        jitter = tenacity.wait_random_exponential(multiplier=s.backoff_base, max=s.backoff_max)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(s.max_retries + 1) | tenacity.stop_when_event_set(self._stop),
            wait=wait_time,
            retry=tenacity.retry_if_exception_type(_Transient),
            sleep=self._sleep or self._stop.wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Stopped:
            raise _Transient(f"stopped after {last_problem}" if attempts else "not sent: stopped") from None

    def _prepare(self, request: IhcRequest) -> _Prepared:
        if not request.rows:
            raise ValueError(f"IHC request {request.request_id!r} has no rows")
        journeys: dict[str, dict[str, tuple[Any, Any]]] = {}
        for row in request.rows:
            try:
                conversion_id, session_id = row["conversion_id"], row["session_id"]
            except (KeyError, TypeError):
                raise ValueError(
                    f"IHC request {request.request_id!r}: every row needs conversion_id and session_id"
                ) from None
            sessions = journeys.setdefault(_key(conversion_id), {})
            if _key(session_id) in sessions:
                raise ValueError(f"IHC request {request.request_id!r}: session {session_id!r} appears twice "
                                 f"in journey {conversion_id!r}")
            sessions[_key(session_id)] = (conversion_id, session_id)
        payload: dict[str, Any] = {"customer_journeys": [dict(row) for row in request.rows]}
        if self.settings.redistribution_parameter is not None:
            payload["redistribution_parameter"] = self.settings.redistribution_parameter
        return _Prepared(request, json.dumps(payload, separators=(",", ":")).encode(), journeys)

    def _attempt(self, prepared: _Prepared, attempt: int) -> IhcResult:
        """One HTTP attempt: an :class:`IhcResult`, or :class:`_Transient`, or a permanent error."""
        request_id = prepared.request.request_id
        s = self.settings
        cap = s.max_response_bytes or DEFAULT_RESPONSE_BASE_BYTES + DEFAULT_RESPONSE_BYTES_PER_SENT_BYTE * len(
            prepared.body
        )
        assert self._session is not None
        with _Deadline(s.timeout) as deadline:
            try:
                with self._session.post(
                    self.url,
                    params={"conv_type_id": s.conv_type_id},
                    data=prepared.body,
                    headers={"x-api-key": self._api_key, "Content-Type": "application/json"},
                    timeout=s.timeout,
                    # A redirect would forward x-api-key to wherever it points; treat it as an error.
                    allow_redirects=False,
                    stream=True,
                    **self._environment,
                ) as response:
                    status = response.status_code
                    local_double = response.headers.get(LOCAL_DOUBLE_HEADER, "").lower() == "true"
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    content = self._read(response, cap, request_id, deadline)
            except requests.exceptions.SSLError as exc:
                # `from None`: requests exceptions carry the request, headers (and key) included.
                raise IhcConfigurationError(
                    f"TLS error talking to {self.url}: {self._redact(str(exc))}; check the host and scheme",
                    request_id=request_id,
                ) from None
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                if deadline.expired:
                    raise _Transient(f"Timeout: no complete answer within {s.timeout:g} s") from None
                raise _Transient(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
            except requests.RequestException as exc:
                raise IhcConfigurationError(
                    f"IHC request {request_id!r} could not be sent: {type(exc).__name__}: {self._redact(str(exc))}",
                    request_id=request_id,
                ) from None
        if status in RETRYABLE_STATUSES:
            raise _Transient(f"HTTP {status}", retry_after)
        text = content.decode("utf-8", errors="replace")
        if status not in SUCCESS_STATUSES:
            raise self._fatal(status, text, request_id)
        try:
            body = json.loads(content)
        except ValueError:
            raise IhcContractError(
                f"IHC request {request_id!r}: HTTP {status} answer is not JSON: {self._excerpt(text)!r}",
                request_id=request_id, status_code=status,
            ) from None
        code = body.get("statusCode", status) if isinstance(body, dict) else status
        # Some gateways report errors in the body of an HTTP 200; treat them like the status.
        if code in RETRYABLE_STATUSES:
            raise _Transient(f"statusCode {code} in an HTTP {status} answer", retry_after)
        if isinstance(code, int) and not isinstance(code, bool) and code >= 300:
            raise self._fatal(code, text, request_id)
        return self._validate(prepared, body, status, attempt, local_double)

    def _read(self, response: requests.Response, cap: int, request_id: Any, deadline: _Deadline) -> bytes:
        """The decoded body, at most ``cap`` bytes, before the attempt's deadline."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and "Content-Encoding" not in response.headers and int(declared) > cap:
            self._too_large(request_id, response.status_code, cap, f"declares {int(declared):,} bytes")
        chunks, size = [], 0
        # Decoded pieces of at most _CHUNK bytes: a compressed answer is never inflated at once.
        for chunk in response.iter_content(_CHUNK):
            size += len(chunk)
            if size > cap:
                self._too_large(request_id, response.status_code, cap, "is larger")
            if deadline.expired:
                raise requests.Timeout
            chunks.append(chunk)
        if deadline.expired:
            raise requests.Timeout
        return b"".join(chunks)

    @staticmethod
    def _too_large(request_id: Any, status: int, cap: int, what: str) -> None:
        raise IhcResponseTooLargeError(
            f"IHC request {request_id!r}: the HTTP {status} answer {what} than the cap of {cap:,} bytes "
            "(decoded); not retried. Raise the extra max_response_bytes if such answers are expected",
            request_id=request_id, status_code=status,
        )

    def _validate(self, prepared: _Prepared, body: Any, http_status: int, attempt: int, local_double: bool) -> IhcResult:
        """Check an answer against what was sent; return it typed, or raise IhcContractError."""
        request_id = prepared.request.request_id

        def fail(problem: str) -> IhcContractError:
            return IhcContractError(f"IHC request {request_id!r}: invalid answer: {problem}",
                                    request_id=request_id, status_code=http_status)

        if not isinstance(body, dict):
            raise fail(f"expected a JSON object, got {type(body).__name__}")
        code = body.get("statusCode", http_status)
        if code not in SUCCESS_STATUSES:
            raise fail(f"statusCode {code!r} is not 200 or 206")
        values = body.get("value")
        if not isinstance(values, list):
            raise fail("'value' is missing or not a list")
        errors = body.get("partialFailureErrors") or []
        if not isinstance(errors, list):
            raise fail("'partialFailureErrors' is not a list")

        journeys = prepared.journeys
        failed: dict[str, PartialFailure] = {}
        for entry in errors:
            conv_key, message = _parse_partial_failure(entry)
            if conv_key is None:
                raise fail(f"partial failure without a conversion id: {self._excerpt(json.dumps(entry))!r}")
            if conv_key not in journeys:
                raise fail(f"partial failure for conversion {conv_key!r}, which was not sent")
            if conv_key not in failed:
                original = next(iter(journeys[conv_key].values()))[0]
                failed[conv_key] = PartialFailure(original, self._redact(message))

        low, high = -SUM_TOLERANCE, 1 + SUM_TOLERANCE
        rows: list[IhcRow] = []
        returned: dict[str, set[str]] = {}
        sums: dict[str, float] = {}
        unknown: list[tuple[str, str]] = []
        duplicates: list[tuple[str, str]] = []
        for item in values:
            if not isinstance(item, dict) or "conversion_id" not in item or "session_id" not in item:
                raise fail(f"row without conversion_id/session_id: {self._excerpt(json.dumps(item))!r}")
            conv_key, session_key = _key(item["conversion_id"]), _key(item["session_id"])
            sent = journeys.get(conv_key, {}).get(session_key)
            if sent is None:
                unknown.append((conv_key, session_key))
                continue
            if conv_key in failed:
                raise fail(f"rows returned for failed journey {conv_key!r}")
            seen = returned.setdefault(conv_key, set())
            if session_key in seen:
                duplicates.append((conv_key, session_key))
                continue
            seen.add(session_key)
            numbers = (item.get("initializer"), item.get("holder"), item.get("closer"), item.get("ihc"))
            # Plain JSON numbers within range pass at once (NaN and infinities fail the range);
            # anything else gets the full checks and their messages.
            if not all((type(n) is float or type(n) is int) and low <= n <= high for n in numbers):
                if not all(_is_number(number) for number in numbers):
                    raise fail(f"row {conv_key!r}/{session_key!r} has missing or non-numeric values")
                for column, number in zip(_VALUE_COLUMNS, numbers, strict=True):
                    if not low <= number <= high:
                        raise fail(f"row {conv_key!r}/{session_key!r} has {column} {number} outside [0, 1]")
            sums[conv_key] = sums.get(conv_key, 0.0) + float(numbers[3])
            # Within the tolerance, values just outside [0, 1] are rounding noise: store the bound.
            rows.append(IhcRow(sent[0], sent[1], *[min(max(float(n), 0.0), 1.0) for n in numbers]))
        if unknown:
            raise fail(f"{len(unknown)} row(s) for sessions not sent: {_examples(unknown)}")
        if duplicates:
            raise fail(f"{len(duplicates)} session(s) returned twice: {_examples(duplicates)}")
        missing = [
            (conv_key, session_key)
            for conv_key, sessions in journeys.items()
            if conv_key not in failed
            for session_key in sessions
            if session_key not in returned.get(conv_key, ())
        ]
        if missing:
            raise fail(f"{len(missing)} session(s) sent but not returned: {_examples(missing)}")
        off = [(conv_key, round(total, 8)) for conv_key, total in sums.items() if abs(total - 1) > SUM_TOLERANCE]
        if off:
            raise fail(f"ihc does not sum to 1 in {len(off)} journey(s): {_examples(off)}")
        return IhcResult(request_id, rows, list(failed.values()), attempt, int(code), local_double)

    def _fatal(self, status: int, text: str, request_id: Any) -> IhcError:
        if status == 400:
            hint = ("the service rejected the request body as malformed; check the journey rows and the "
                    "redistribution_parameter extra of the connection")
        elif status in (401, 403):
            hint = "the API key is missing or wrong; set the right key as the password of the IHC connection"
        elif status == 404:
            hint = (f"the service does not know conv_type_id {self.settings.conv_type_id!r}; set the extra "
                    "conv_type_id of the IHC connection to a trained conversion type")
        elif status == 413:
            hint = ("the request is over a limit of the service; lower the extras max_journeys_per_request / "
                    "max_sessions_per_request of the IHC connection (free test accounts allow 200 sessions "
                    "per request)")
        elif 300 <= status < 400:
            hint = f"the service answered with a redirect; point the connection at the final URL instead of {self.url}"
        else:
            hint = "unexpected answer; not retried"
        message = f"IHC request {request_id!r} failed with HTTP {status}: {hint}"
        detail = self._server_message(text)
        if detail:
            message += f" (service said: {detail!r})"
        kind = IhcConfigurationError if status < 500 else IhcContractError
        return kind(message, status_code=status, request_id=request_id)

    def _server_message(self, text: str) -> str:
        try:
            body = json.loads(text)
        except ValueError:
            return self._excerpt(text)
        if isinstance(body, dict):
            for name in ("message", "detail", "error", "errorMessage"):
                if body.get(name):
                    return self._excerpt(str(body[name]))
        return self._excerpt(text)

    def _excerpt(self, text: str) -> str:
        text = self._redact(text.strip())
        return text if len(text) <= _MAX_BODY_EXCERPT else text[:_MAX_BODY_EXCERPT] + "..."


def _parse_partial_failure(entry: Any) -> tuple[str | None, str]:
    """Conversion id (as text) and message of one ``partialFailureErrors`` entry."""
    if not isinstance(entry, dict):
        return None, str(entry)
    conv_id = next((_key(entry[n]) for n in ("conversion_id", "conversionId", "conv_id") if entry.get(n) is not None), None)
    message = next(
        (str(entry[name]) for name in ("message", "error", "errorMessage", "detail", "reason") if entry.get(name)),
        json.dumps(entry, default=str),
    )
    return conv_id, message
