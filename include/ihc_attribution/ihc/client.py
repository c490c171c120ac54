"""HTTP client for the IHC attribution API (``POST /v1/compute_ihc``), without Airflow.

A thread pool over one ``requests`` session; HTTP 429, 500, 502, 503, 504, timeouts and connection
errors are retried with ``tenacity`` (exponential backoff, full jitter, ``Retry-After`` capped at
``backoff_max``). Every answer is checked by :func:`~ihc_attribution.ihc.answers.check_answer`.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import tenacity
import urllib3
from requests import Session
from requests.adapters import HTTPAdapter

from ihc_attribution.ihc.answers import (SUCCESS_STATUSES, IhcRequest, IhcResult, PreparedRequest, check_answer,
                                         examples, prepare_request, refusal)
from ihc_attribution.ihc.errors import IhcConfigurationError, IhcContractError, IhcRetriesExhaustedError
from ihc_attribution.ihc.settings import Redactor, clean_api_key, parse_settings

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
LOCAL_DOUBLE_HEADER = "X-IHC-Local-Double"  # set by the project's local IHC double on every answer
_CHUNK = 64 * 1024


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
    """Counters of one call of :meth:`IhcClient.compute_ihc` (``attempts`` and ``retries`` of the requests that
    finished; ``journeys_answered`` includes rejected ones), plus the API stage's checkpoints."""

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
        return len(self.unanswered)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header (seconds or an HTTP date) asks for, ``None`` if unusable."""
    with contextlib.suppress(TypeError, ValueError):
        seconds = float(value)  # type: ignore[arg-type]
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)  # type: ignore[arg-type]
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
    return None


class _Transient(Exception):
    """A failed attempt worth retrying; ``attempts`` is set on the last one, when the request gives up."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after
        self.attempts = 0


class IhcClient:
    """Send customer journeys to the IHC API, concurrently, with retries and answer checks.

    :param api_key: sent as header ``x-api-key``, stripped; never logged.
    :param sleep: waits between attempts (tests inject a no-op); by default they end early when the call stops.
    :param settings: ``base_url``, ``conv_type_id`` and the other fields of :class:`~ihc_attribution.ihc.settings.IhcSettings`.
    :raises IhcConfigurationError: for a bad setting or key.
    """

    def __init__(
        self, base_url: str, api_key: str, conv_type_id: str, *, sleep: Callable[[float], None] | None = None,
        **settings: Any,
    ) -> None:
        self.settings = parse_settings({"base_url": base_url, "conv_type_id": conv_type_id, **settings}, "IhcClient")
        self.url = self.settings.url
        self._api_key = clean_api_key(api_key)
        self._redact = Redactor(api_key)
        self._sleep = sleep
        self._session: Session | None = None
        self._stop = threading.Event()
        self._cancelled = False

    @property
    def account_digest(self) -> str:
        """A digest of the API key: tells accounts apart (answers are reused per account), reveals no key."""
        return hashlib.sha256(f"ihc-account:{self._api_key}".encode()).hexdigest()[:16]

    def close(self) -> None:
        """Close the HTTP session (the next call opens a new one)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def cancel(self) -> None:
        """Stop at once: no new request, no retry, waits cut short (e.g. the task was killed)."""
        self._cancelled = True
        self._stop.set()

    def send_one(self, request: IhcRequest) -> IhcResult:
        """Send one request (with retries) and return its validated answer."""
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
        """Send requests, at most ``max_concurrency`` in flight, and deliver each validated answer as it arrives.

        ``requests`` is read lazily; ``on_result`` (whose exception stops the call) and ``progress`` run
        in the calling thread, so the requests may come from a database and the answers go into SQLite.
        When answers come in, one request goes out before they are delivered, so the service is not
        idle while they are stored (with ``max_concurrency`` 1, nothing goes out before). ``total``
        (default ``len(requests)`` if sized) is for progress; ``summary`` is filled in even when this raises.

        :raises PermanentError: (an IhcConfigurationError or IhcContractError) at once; the requests in flight are abandoned.
        :raises IhcRetriesExhaustedError: when some stayed unanswered (retries ran out, or :meth:`cancel`),
            after no new request was sent and those in flight were delivered.
        :raises ValueError: for a malformed request (duplicate id, no rows, duplicate session).
        """
        if total is None and hasattr(requests, "__len__"):
            total = len(requests)
        summary = summary if summary is not None else SendSummary()
        self._stop = stop = threading.Event()
        if self._cancelled:
            stop.set()
        if self._session is None:  # a connection per worker, no urllib3 retries (tenacity retries)
            self._session = Session()  # `requests` is the argument here
            self._session.trust_env = self.settings.trust_env
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.settings.max_concurrency, max_retries=0)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        run = _Run(self, iter(requests), stop, summary, total)
        try:
            run.loop(on_result, progress)
        except BaseException:
            stop.set()
            # Answers still in flight cannot be used now; their workers stop before another attempt.
            run.pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            summary.elapsed_seconds += time.monotonic() - run.started
        run.pool.shutdown()
        if run.last_errors:
            ids = list(run.last_errors)
            reason = "the task was cancelled" if self._cancelled else f"up to {self.settings.max_retries} retries"
            raise IhcRetriesExhaustedError(
                f"{len(ids)} IHC request(s) not answered after {reason}: {examples(ids)}; last error: "
                f"{run.last_errors[ids[0]]}. {summary.requests_answered} answered request(s) were delivered; requests "
                "after the failure were not sent.", request_ids=ids, last_errors=run.last_errors, summary=summary)
        return summary

    def _send(self, sent: PreparedRequest, stop: threading.Event) -> IhcResult:
        """Send one request until answered: the result, a permanent error, or the last _Transient."""
        s, request_id = self.settings, sent.request.request_id
        attempts, problem = 0, ""

        def attempt() -> IhcResult:
            nonlocal attempts, problem
            if stop.is_set():
                raise _Transient(f"stopped after {problem}" if attempts else "not sent: stopped")
            attempts += 1
            try:
                return self._attempt(sent, attempts)
            except _Transient as exc:
                problem = str(exc)
                raise

        jitter = tenacity.wait_random_exponential(multiplier=s.backoff_base, max=s.backoff_max)

        def wait(state: tenacity.RetryCallState) -> float:
            retry_after = state.outcome.exception().retry_after
            return jitter(state) if retry_after is None else min(retry_after, s.backoff_max)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            log.warning("IHC request %r: %s; retry %d/%d in %.2f s", request_id, state.outcome.exception(),
                        state.attempt_number, s.max_retries, state.next_action.sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(s.max_retries + 1) | tenacity.stop_when_event_set(stop),
            wait=wait, retry=tenacity.retry_if_exception_type(_Transient), sleep=self._sleep or stop.wait,
            before_sleep=before_sleep, reraise=True,
        )
        try:
            return retrying(attempt)
        except _Transient as exc:
            exc.attempts = attempts
            raise

    def _attempt(self, sent: PreparedRequest, number: int) -> IhcResult:
        """One HTTP attempt: the checked answer, or _Transient, or a permanent error."""
        s, request_id = self.settings, sent.request.request_id
        deadline = time.monotonic() + s.timeout
        assert self._session is not None
        try:
            with self._session.post(
                self.url, params={"conv_type_id": s.conv_type_id}, data=sent.body,
                headers={"x-api-key": self._api_key, "Content-Type": "application/json"},
                timeout=s.timeout, stream=True,
                # A redirect would forward x-api-key to wherever it points; it is refused instead.
                allow_redirects=False,
                # Per request, not on the session: requests lets the environment override the session's.
                verify=s.verify, cert=s.cert, proxies=s.proxies or {},
            ) as response:
                content = self._read(response, sent, deadline)
        # `from None` throughout: requests exceptions carry the request, the key among its headers.
        except requests.exceptions.SSLError as exc:
            raise IhcConfigurationError(f"IHC request {request_id!r}: TLS error talking to {self.url}: "
                                        f"{self._redact(str(exc))}; check the host, the scheme and the extras verify "
                                        "and cert") from None
        except (requests.Timeout, requests.ConnectionError, urllib3.exceptions.HTTPError) as exc:
            if time.monotonic() >= deadline:
                raise _Transient(f"Timeout: no complete answer within {s.timeout:g} s") from None
            raise _Transient(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
        except requests.RequestException as exc:
            raise IhcConfigurationError(f"IHC request {request_id!r} could not be sent: {type(exc).__name__}: "
                                        f"{self._redact(str(exc))}") from None
        return self._interpret(sent, response, content, number)

    def _read(self, response: requests.Response, sent: PreparedRequest, deadline: float) -> bytes:
        """The decoded body, at most the size cap, complete before the deadline."""
        s, request_id = self.settings, sent.request.request_id
        cap = s.max_response_bytes or (1 << 20) + 4 * len(sent.body)  # by default 1 MiB + 4 x the request body
        chunks, size = [], 0
        # read1 returns what has arrived, so a trickling body still meets the deadline check, and
        # decodes at most _CHUNK bytes at a time, so a compressed answer is never inflated at once.
        while chunk := response.raw.read1(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > cap:
                raise IhcContractError(
                    f"IHC request {request_id!r}: the HTTP {response.status_code} answer is larger than the cap of "
                    f"{cap:,} bytes (decoded); not retried. Raise the extra max_response_bytes if such answers are "
                    "expected", status_code=response.status_code)
            if time.monotonic() >= deadline:
                raise _Transient(f"Timeout: no complete answer within {s.timeout:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _interpret(self, sent: PreparedRequest, response: requests.Response, content: bytes, number: int) -> IhcResult:
        """What an answer means: a result, a transient failure or a permanent error."""
        s, status, request_id = self.settings, response.status_code, sent.request.request_id
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in RETRYABLE_STATUSES:
            raise _Transient(f"HTTP {status}", retry_after)
        text = content.decode("utf-8", errors="replace")
        if status not in SUCCESS_STATUSES:
            raise refusal(status, text, request_id, s.conv_type_id, self.url, self._redact.excerpt)
        try:
            body = json.loads(content)
        except ValueError:
            raise IhcContractError(f"IHC request {request_id!r}: HTTP {status} answer is not JSON: "
                                   f"{self._redact.excerpt(text)!r}", status_code=status) from None
        code = body.get("statusCode", status) if isinstance(body, dict) else status
        # Some gateways report errors in the body of an HTTP 200; treat them like the status.
        if code in RETRYABLE_STATUSES:
            raise _Transient(f"statusCode {code} in an HTTP {status} answer", retry_after)
        if type(code) is int and code >= 300:
            raise refusal(code, text, request_id, s.conv_type_id, self.url, self._redact.excerpt)
        local_double = response.headers.get(LOCAL_DOUBLE_HEADER, "").lower() == "true"
        return check_answer(sent, body, status, number, local_double, self._redact.excerpt)


class _Run:
    """One call of :meth:`IhcClient.compute_ihc`: the requests in flight and what came of them."""

    def __init__(self, client: IhcClient, pending: Iterator[IhcRequest], stop: threading.Event, summary: SendSummary,
                 total: int | None) -> None:
        self.client, self.pending, self.stop, self.summary, self.total = client, pending, stop, summary, total
        self.limit = client.settings.max_concurrency
        self.pool = ThreadPoolExecutor(self.limit, thread_name_prefix="ihc-client")
        self.in_flight: dict[Future[IhcResult], Any] = {}
        self.seen: set[Any] = set()
        self.last_errors: dict[Any, str] = {}
        self.done = 0
        self.started = time.monotonic()

    def loop(self, on_result: Callable[[IhcResult], None], progress: Callable[[SendProgress], None] | None) -> None:
        """Until nothing is in flight: wait for answers, deliver them, start the next requests."""
        self.submit(self.limit)
        while self.in_flight:
            done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
            finished = [(future, self.in_flight.pop(future)) for future in list(self.in_flight) if future in done]
            if self.limit > 1 and not any(future.exception() for future, _ in finished):
                self.submit(len(self.in_flight) + 1)
            for future, request_id in finished:
                self.finish(future, request_id, on_result)
                if progress is not None:
                    s = self.summary
                    progress(SendProgress(self.done, self.total, s.retries, s.journeys_answered, s.journeys_rejected,
                                          time.monotonic() - self.started))
            self.submit(self.limit)

    def submit(self, in_flight: int) -> None:
        """Start requests until ``in_flight`` are in flight, none is left or the run stopped."""
        while not self.stop.is_set() and len(self.in_flight) < in_flight:
            request = next(self.pending, None)
            if request is None:
                return
            if request.request_id in self.seen:
                raise ValueError(f"duplicate request id {request.request_id!r}")
            self.seen.add(request.request_id)
            sent = prepare_request(request, self.client.settings.redistribution_parameter)
            self.in_flight[self.pool.submit(self.client._send, sent, self.stop)] = request.request_id
            self.summary.requests_sent += 1

    def finish(self, future: Future[IhcResult], request_id: Any, on_result: Callable[[IhcResult], None]) -> None:
        """Deliver a finished request's answer and count it, or record that it gave up and stop."""
        self.done += 1
        s = self.summary
        try:
            result = future.result()
        except _Transient as problem:
            s.attempts, s.retries = s.attempts + problem.attempts, s.retries + max(problem.attempts - 1, 0)
            s.unanswered.append(request_id)
            self.last_errors[request_id] = str(problem)
            if not self.stop.is_set():
                log.error("IHC request %r gave up (%s); sending no new requests, waiting for %d in flight.",
                          request_id, problem, len(self.in_flight))
            self.stop.set()
            return
        if result.local_double and not s.local_double:
            log.warning("Answers come from the local IHC double, not from the production IHC service: point "
                        "the connection at the real API for production numbers.")
        on_result(result)
        s.attempts, s.retries = s.attempts + result.attempts, s.retries + result.attempts - 1
        s.requests_answered += 1
        s.rows += len(result.rows)
        s.journeys_answered += len({str(row.conversion_id) for row in result.rows}) + len(result.failed)
        s.journeys_rejected += len(result.failed)
        s.local_double |= result.local_double
