"""HTTP client for the IHC attribution API (``POST /v1/compute_ihc``), without Airflow.

:class:`IhcClient` sends packed requests concurrently, retries what is worth retrying, and
checks every answer against the API contract before handing it over, so that what reaches the
database is known to be complete: every session sent comes back exactly once (except those of
journeys the service reports as failed) and the ``ihc`` of every journey sums to 1.

Failure handling, by kind:

* **transient** (HTTP 429, 500, 502, 503, 504, timeouts, connection errors): retried up to
  ``max_retries`` times with exponential backoff and full jitter, honouring ``Retry-After``
  (capped at ``backoff_max``). When one request runs out of retries no new request is started;
  the requests in flight finish their current attempt, their answers are delivered, then
  :class:`IhcRetriesExhaustedError` lists the requests left unanswered.
* **configuration** (HTTP 400, 401, 403, 404, 413, other 4xx, redirects, TLS errors):
  :class:`IhcConfigurationError` at once, no retry, no new request. The same request would fail
  the same way, and so would the hundreds behind it.
* **contract violations** (a 200 that is not JSON, rows missing, duplicated or unknown, ihc not
  summing to 1, rows for a failed journey): :class:`IhcResponseError` at once. Retrying would
  most likely get the same answer, and silently keeping it would corrupt the attribution.

Exception and log messages never contain the API key: they are built from status codes, ids and
excerpts of response bodies (with the key masked, should a server echo it), never from headers or
``requests`` objects.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

ENDPOINT = "/v1/compute_ihc"
#: Statuses worth another attempt: rate limiting and transient server or gateway failures.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Body ``statusCode`` values of a usable answer: full success and partial success.
SUCCESS_STATUSES = frozenset({200, 206})
#: How far the ihc of a journey may stray from 1 (the service rounds to 4 decimals, sum-preserving).
SUM_TOLERANCE = 1e-6
#: Header set by the project's local IHC double on every answer.
LOCAL_DOUBLE_HEADER = "X-IHC-Local-Double"

_VALUE_COLUMNS = ("initializer", "holder", "closer", "ihc")
_MAX_EXAMPLES = 5
_MAX_BODY_EXCERPT = 300


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class IhcError(Exception):
    """Base class of the errors raised by :class:`IhcClient`."""


class IhcConfigurationError(IhcError):
    """The service refused a request in a way retrying cannot fix (key, conv type, limits, body).

    :param message: what happened and what to change.
    :param status_code: HTTP status (or body ``statusCode``), ``None`` for errors before an answer.
    :param request_id: the request that got the answer.
    """

    def __init__(self, message: str, *, status_code: int | None = None, request_id: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id


class IhcResponseError(IhcError):
    """An answer broke the API contract (shape, completeness, sums).

    :param message: what is wrong with the answer.
    :param request_id: the request that got the answer.
    :param status_code: HTTP status of the answer.
    """

    def __init__(self, message: str, *, request_id: Any = None, status_code: int | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.status_code = status_code


class IhcRetriesExhaustedError(IhcError):
    """Requests stayed unanswered after all retries; answered ones were delivered before.

    :param message: summary of what failed.
    :param request_ids: ids of the requests that were sent but not answered (those that ran out
        of retries and those stopped because of them). Requests never sent are not listed.
    :param last_errors: request id -> last transient problem seen for it.
    :param summary: counters of the whole run.
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IhcRequest:
    """One API request: the rows of whole journeys, as the API expects them.

    :param request_id: caller's id of the request (e.g. its checkpoint key); unique per run.
    :param rows: ``conversion_id``, ``session_id``, ``timestamp``, ``channel_label``,
        ``holder_engagement``, ``closer_engagement``, ``conversion``, ``impression_interaction``.
    """

    request_id: str | int
    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class IhcRow:
    """Credit of one session in one journey, as validated from an answer.

    ``conversion_id`` and ``session_id`` are the values that were sent (same types).
    """

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

    :param request_id: id of the request answered.
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
    """Progress of :meth:`IhcClient.send_all`, reported after each finished request.

    :param done: requests finished (answered or given up).
    :param total: requests expected, when known.
    :param retries: retries so far, over all requests.
    :param failed_journeys: journeys reported as failed so far.
    :param elapsed_seconds: time since :meth:`IhcClient.send_all` started.
    """

    done: int
    total: int | None
    retries: int
    failed_journeys: int
    elapsed_seconds: float


@dataclass
class SendSummary:
    """Counters of one :meth:`IhcClient.send_all` call.

    :param requests_sent: requests handed to a worker (at least one attempt started).
    :param requests_answered: requests answered and delivered to ``on_result``.
    :param requests_partial: answered requests with failed journeys (statusCode 206).
    :param requests_failed: requests left unanswered (retries exhausted, or stopped).
    :param attempts: HTTP attempts over all answered requests.
    :param retries: retries over all requests (attempts beyond the first).
    :param rows: result rows delivered.
    :param failed_journeys: journeys reported as failed in delivered answers.
    :param elapsed_seconds: wall time of the call.
    :param unanswered_request_ids: ids of the unanswered requests.
    :param local_double: at least one answer came from the local IHC double.
    """

    requests_sent: int = 0
    requests_answered: int = 0
    requests_partial: int = 0
    requests_failed: int = 0
    attempts: int = 0
    retries: int = 0
    rows: int = 0
    failed_journeys: int = 0
    elapsed_seconds: float = 0.0
    unanswered_request_ids: list[Any] = field(default_factory=list)
    local_double: bool = False


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds.

    :param value: header value: delay in seconds or an HTTP date.
    :param now: current time for HTTP dates (default: now, UTC).
    :return: seconds (>= 0), or ``None`` when absent or unparsable.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def _key(value: Any) -> str:
    # JSON may bring ids back as strings even if they were sent as numbers; compare as text.
    return str(value)


def _examples(items: Iterable[Any]) -> str:
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:_MAX_EXAMPLES])
    return shown + (f" and {len(items) - _MAX_EXAMPLES} more" if len(items) > _MAX_EXAMPLES else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class _Prepared:
    """A request ready to send: serialised body and the sessions to expect back."""

    request: IhcRequest
    body: bytes
    # str(conversion_id) -> {str(session_id): (conversion_id, session_id) as sent}
    journeys: dict[str, dict[str, tuple[Any, Any]]]


@dataclass
class _Outcome:
    """What a worker returns: a result, or the reason the request stays unanswered."""

    request_id: Any
    result: IhcResult | None = None
    problem: str | None = None
    exhausted: bool = False


class _Transient(Exception):
    """A failed attempt worth retrying (internal)."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class _Counter:
    """Thread-safe counter of retries, read by the progress reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, amount: int = 1) -> None:
        with self._lock:
            self.value += amount


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class IhcClient:
    """Send customer journeys to the IHC API, concurrently, with retries and answer checks.

    :param base_url: scheme and host of the service, e.g. ``https://api.ihc-attribution.com``
        (a trailing ``/v1/compute_ihc`` is accepted too).
    :param api_key: sent as header ``x-api-key``; never logged.
    :param conv_type_id: trained conversion type, query parameter ``conv_type_id``.
    :param timeout: seconds to wait for the connection and for the answer, a number for both or a
        ``(connect, read)`` pair. Every request has one.
    :param max_concurrency: at most this many requests in flight.
    :param max_retries: retries per request after the first attempt (0 = no retry).
    :param backoff_base: first backoff cap in seconds; the cap doubles per retry.
    :param backoff_max: longest wait between attempts, also caps ``Retry-After``.
    :param redistribution_parameter: sent as ``redistribution_parameter`` when not ``None``.
    :param sleep: waits between attempts; inject a no-op in tests. With the default
        ``time.sleep`` waits are cut short when the run stops (fatal error elsewhere).
    :param session_factory: makes the ``requests.Session`` objects (one per worker); default:
        plain sessions without urllib3 retries (this client does the retrying).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        conv_type_id: str,
        *,
        timeout: float | tuple[float, float] = 30.0,
        max_concurrency: int = 4,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        redistribution_parameter: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        parsed = urlparse(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key is empty: the IHC API needs a key")
        if not isinstance(conv_type_id, str) or not conv_type_id:
            raise ValueError(f"conv_type_id must be a non-empty string, got {conv_type_id!r}")
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        if not (connect_timeout > 0 and read_timeout > 0):
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must be >= 0")

        root = base_url.rstrip("/")
        self.url = root if root.endswith(ENDPOINT) else root + ENDPOINT
        self.conv_type_id = conv_type_id
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.redistribution_parameter = (
            dict(redistribution_parameter) if redistribution_parameter is not None else None
        )
        self._api_key = api_key
        self._sleep = sleep
        self._session_factory = session_factory or _default_session
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._random = random.Random()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(url={self.url!r}, conv_type_id={self.conv_type_id!r}, "
            f"max_concurrency={self.max_concurrency}, max_retries={self.max_retries})"
        )

    def __enter__(self) -> IhcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled HTTP sessions (they are re-created on the next request)."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # ----------------------------------------------------------------------------- public API

    def send_one(self, request: IhcRequest) -> IhcResult:
        """Send one request (with retries) and return its validated answer.

        :raises IhcConfigurationError: for answers retrying cannot fix.
        :raises IhcResponseError: for an answer that breaks the contract.
        :raises IhcRetriesExhaustedError: when all attempts failed transiently.
        """
        outcome = self._run_one(request, threading.Event(), _Counter())
        if outcome.result is None:
            raise IhcRetriesExhaustedError(
                f"IHC request {request.request_id!r} not answered after {self.max_retries} "
                f"retries: {outcome.problem}",
                request_ids=[request.request_id],
                last_errors={request.request_id: outcome.problem or ""},
            )
        return outcome.result

    def send_all(
        self,
        requests: Iterable[IhcRequest],
        on_result: Callable[[IhcResult], None],
        *,
        progress: Callable[[SendProgress], None] | None = None,
        total: int | None = None,
    ) -> SendSummary:
        """Send requests concurrently and deliver each validated answer as it arrives.

        ``requests`` is consumed lazily, in the calling thread, never more than
        ``max_concurrency`` ahead of the answers, so it may be a generator reading from a
        database. ``on_result`` and ``progress`` are called in the calling thread too (so they
        may write to SQLite), in completion order.

        :param requests: the requests; ids must be unique.
        :param on_result: receives each :class:`IhcResult`; an exception from it stops the run
            and propagates.
        :param progress: receives a :class:`SendProgress` after each finished request.
        :param total: number of requests, for progress reports (default: ``len(requests)`` when
            it has a length).
        :return: counters of the run.
        :raises IhcConfigurationError: at the first answer retrying cannot fix; requests in
            flight are abandoned, no new one is sent.
        :raises IhcResponseError: at the first answer breaking the contract, likewise.
        :raises IhcRetriesExhaustedError: after the requests in flight have finished and been
            delivered, when some requests stayed unanswered; requests after them were not sent.
        :raises ValueError: for a malformed request (duplicate id, no rows, duplicate session).
        """
        if total is None and hasattr(requests, "__len__"):
            total = len(requests)  # type: ignore[arg-type]
        started = time.monotonic()
        summary = SendSummary()
        retries = _Counter()
        stop = threading.Event()
        last_errors: dict[Any, str] = {}
        seen_ids: set[Any] = set()
        in_flight: dict[Future[_Outcome], Any] = {}
        pending = iter(requests)
        draining = False
        done_count = 0
        warned_double = False
        executor = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="ihc-client")
        finished_cleanly = False
        try:
            while True:
                # Bounded submission: never read further ahead than there are free workers.
                while not draining and len(in_flight) < self.max_concurrency:
                    request = next(pending, None)
                    if request is None:
                        draining = True
                        break
                    if request.request_id in seen_ids:
                        raise ValueError(f"duplicate request id {request.request_id!r}")
                    seen_ids.add(request.request_id)
                    in_flight[executor.submit(self._run_one, request, stop, retries)] = request.request_id
                    summary.requests_sent += 1
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                # Deliver in submission order among those done, for reproducible logs.
                for future in [f for f in in_flight if f in done]:
                    request_id = in_flight.pop(future)
                    outcome = future.result()  # fatal errors raise here
                    done_count += 1
                    if outcome.result is not None:
                        result = outcome.result
                        if result.local_double and not warned_double:
                            log.warning(
                                "Answers come from the local IHC double (header %s), not from "
                                "the production IHC service.",
                                LOCAL_DOUBLE_HEADER,
                            )
                            warned_double = True
                        on_result(result)
                        summary.requests_answered += 1
                        summary.requests_partial += bool(result.failed)
                        summary.attempts += result.attempts
                        summary.rows += len(result.rows)
                        summary.failed_journeys += len(result.failed)
                        summary.local_double |= result.local_double
                    else:
                        summary.requests_failed += 1
                        summary.unanswered_request_ids.append(request_id)
                        last_errors[request_id] = outcome.problem or ""
                        if outcome.exhausted and not draining:
                            log.error(
                                "IHC request %r not answered after %d retries (%s); sending no "
                                "new requests, waiting for %d in flight.",
                                request_id,
                                self.max_retries,
                                outcome.problem,
                                len(in_flight),
                            )
                        draining = True
                        # Requests in flight finish their current attempt but do not retry.
                        stop.set()
                    if progress is not None:
                        progress(
                            SendProgress(
                                done=done_count,
                                total=total,
                                retries=retries.value,
                                failed_journeys=summary.failed_journeys,
                                elapsed_seconds=time.monotonic() - started,
                            )
                        )
            finished_cleanly = True
        except BaseException:
            stop.set()
            raise
        finally:
            # On a fatal error do not wait for the requests in flight: their answers cannot be
            # used anyway, and the workers stop at their next check of `stop`.
            executor.shutdown(wait=finished_cleanly, cancel_futures=True)
            summary.retries = retries.value
            summary.elapsed_seconds = time.monotonic() - started

        if summary.unanswered_request_ids:
            ids = summary.unanswered_request_ids
            raise IhcRetriesExhaustedError(
                f"{len(ids)} IHC request(s) not answered after up to {self.max_retries} retries: "
                f"{_examples(ids)}; last error: {last_errors[ids[0]]}. "
                f"{summary.requests_answered} answered request(s) were delivered; requests after "
                "the failure were not sent.",
                request_ids=ids,
                last_errors=last_errors,
                summary=summary,
            )
        return summary

    # ------------------------------------------------------------------------------- internals

    def _run_one(self, request: IhcRequest, stop: threading.Event, retries: _Counter) -> _Outcome:
        """Send one request until it is answered, fails fatally or runs out of retries."""
        prepared = self._prepare(request)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._attempt(prepared, attempt)
            except _Transient as problem:
                if attempt > self.max_retries:
                    return _Outcome(request.request_id, problem=problem.problem, exhausted=True)
                if stop.is_set():
                    return _Outcome(request.request_id, problem=f"stopped after {problem.problem}")
                delay = self._backoff(attempt, problem.retry_after)
                log.warning(
                    "IHC request %r: %s; retry %d/%d in %.2f s",
                    request.request_id,
                    problem.problem,
                    attempt,
                    self.max_retries,
                    delay,
                )
                retries.add()
                self._wait(delay, stop)
                if stop.is_set():
                    return _Outcome(request.request_id, problem=f"stopped after {problem.problem}")
                continue
            return _Outcome(request.request_id, result=result)

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
                raise ValueError(
                    f"IHC request {request.request_id!r}: session {session_id!r} appears twice in "
                    f"journey {conversion_id!r}"
                )
            sessions[_key(session_id)] = (conversion_id, session_id)
        payload: dict[str, Any] = {"customer_journeys": [dict(row) for row in request.rows]}
        if self.redistribution_parameter is not None:
            payload["redistribution_parameter"] = self.redistribution_parameter
        body = json.dumps(payload, separators=(",", ":")).encode()
        return _Prepared(request=request, body=body, journeys=journeys)

    def _attempt(self, prepared: _Prepared, attempt: int) -> IhcResult:
        """One HTTP attempt: an :class:`IhcResult`, or :class:`_Transient`, or a fatal error."""
        request_id = prepared.request.request_id
        session = self._acquire_session()
        try:
            response = session.post(
                self.url,
                params={"conv_type_id": self.conv_type_id},
                data=prepared.body,
                headers={"x-api-key": self._api_key, "Content-Type": "application/json"},
                timeout=self.timeout,
                # A redirect would forward x-api-key to wherever it points; treat it as an error.
                allow_redirects=False,
            )
            status = response.status_code
            text = response.text
            local_double = response.headers.get(LOCAL_DOUBLE_HEADER, "").lower() == "true"
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except requests.exceptions.SSLError as exc:
            # `from None`: requests exceptions carry the request, headers (and key) included.
            raise IhcConfigurationError(
                f"TLS error talking to {self.url}: {self._redact(str(exc))}; check the host and scheme",
                request_id=request_id,
            ) from None
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
        except requests.RequestException as exc:
            raise IhcConfigurationError(
                f"IHC request {request_id!r} could not be sent: {type(exc).__name__}: "
                f"{self._redact(str(exc))}",
                request_id=request_id,
            ) from None
        finally:
            self._release_session(session)

        if status in RETRYABLE_STATUSES:
            raise _Transient(f"HTTP {status}", retry_after)
        if status not in SUCCESS_STATUSES:
            raise self._fatal(status, text, request_id)
        try:
            body = json.loads(text)
        except ValueError:
            raise IhcResponseError(
                f"IHC request {request_id!r}: HTTP {status} answer is not JSON: "
                f"{self._excerpt(text)!r}",
                request_id=request_id,
                status_code=status,
            ) from None
        code = body.get("statusCode", status) if isinstance(body, dict) else status
        # Some gateways report errors in the body of an HTTP 200; treat them like the status.
        if code in RETRYABLE_STATUSES:
            raise _Transient(f"statusCode {code} in an HTTP {status} answer", retry_after)
        if isinstance(code, int) and not isinstance(code, bool) and code >= 300:
            raise self._fatal(code, text, request_id)
        return self._validate(prepared, body, status, attempt, local_double)

    def _validate(
        self, prepared: _Prepared, body: Any, http_status: int, attempt: int, local_double: bool
    ) -> IhcResult:
        """Check an answer against what was sent; return it typed, or raise IhcResponseError."""
        request_id = prepared.request.request_id

        def fail(problem: str) -> IhcResponseError:
            return IhcResponseError(
                f"IHC request {request_id!r}: invalid answer: {problem}",
                request_id=request_id,
                status_code=http_status,
            )

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
            numbers = [item.get(column) for column in _VALUE_COLUMNS]
            if not all(_is_number(number) for number in numbers):
                raise fail(f"row {conv_key!r}/{session_key!r} has missing or non-numeric values")
            initializer, holder, closer, ihc = (float(number) for number in numbers)
            if not -SUM_TOLERANCE <= ihc <= 1 + SUM_TOLERANCE:
                raise fail(f"row {conv_key!r}/{session_key!r} has ihc {ihc} outside [0, 1]")
            sums[conv_key] = sums.get(conv_key, 0.0) + ihc
            rows.append(IhcRow(sent[0], sent[1], initializer, holder, closer, ihc))
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
        return IhcResult(
            request_id=request_id,
            rows=rows,
            failed=list(failed.values()),
            attempts=attempt,
            status_code=int(code),
            local_double=local_double,
        )

    def _fatal(self, status: int, text: str, request_id: Any) -> IhcError:
        detail = self._server_message(text)
        if status == 400:
            hint = (
                "the service rejected the request body as malformed; check the journey rows and "
                "the redistribution_parameter extra of the connection"
            )
        elif status in (401, 403):
            hint = "the API key is missing or wrong; set the right key as the password of the IHC connection"
        elif status == 404:
            hint = (
                f"the service does not know conv_type_id {self.conv_type_id!r}; set the extra "
                "conv_type_id of the IHC connection to a trained conversion type"
            )
        elif status == 413:
            hint = (
                "the request is over a limit of the service; lower the extras "
                "max_journeys_per_request / max_sessions_per_request of the IHC connection "
                "(free test accounts allow 200 sessions per request)"
            )
        elif 300 <= status < 400:
            hint = f"the service answered with a redirect; point the connection at the final URL instead of {self.url}"
        else:
            hint = "unexpected answer; not retried"
        message = f"IHC request {request_id!r} failed with HTTP {status}: {hint}"
        if detail:
            message += f" (service said: {detail!r})"
        if status < 500:
            return IhcConfigurationError(message, status_code=status, request_id=request_id)
        return IhcResponseError(message, request_id=request_id, status_code=status)

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

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***")

    def _backoff(self, retry_number: int, retry_after: float | None) -> float:
        """Delay before retry ``retry_number`` (1-based): Retry-After, else full jitter."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        cap = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry_number - 1, 60))
        return self._random.uniform(0.0, cap)

    def _wait(self, delay: float, stop: threading.Event) -> None:
        if self._sleep is time.sleep:
            stop.wait(delay)  # same wait, but a fatal error elsewhere ends it early
        else:
            self._sleep(delay)

    def _acquire_session(self) -> requests.Session:
        with self._sessions_lock:
            if self._sessions:
                return self._sessions.pop()
        return self._session_factory()

    def _release_session(self, session: requests.Session) -> None:
        with self._sessions_lock:
            self._sessions.append(session)


def _default_session() -> requests.Session:
    session = requests.Session()
    # One connection per session (one session per worker); retries are done above urllib3.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _parse_partial_failure(entry: Any) -> tuple[str | None, str]:
    """Conversion id (as text) and message of one ``partialFailureErrors`` entry."""
    if not isinstance(entry, dict):
        return None, str(entry)
    conv_id = None
    for name in ("conversion_id", "conversionId", "conv_id"):
        if entry.get(name) is not None:
            conv_id = _key(entry[name])
            break
    message = next(
        (str(entry[name]) for name in ("message", "error", "errorMessage", "detail", "reason") if entry.get(name)),
        json.dumps(entry, default=str),
    )
    return conv_id, message
