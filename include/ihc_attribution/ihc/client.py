"""HTTP client for the IHC attribution API (``POST /v1/compute_ihc``), without Airflow.

:class:`IhcClient` sends packed requests from a thread pool over one ``requests`` session,
retries with ``tenacity`` what is worth retrying, and hands over each answer that
:func:`~ihc_attribution.ihc.answers.check_answer` accepts.

* **Transient** failures (HTTP 429, 500, 502, 503, 504, timeouts, connection errors) are retried
  up to ``max_retries`` times with exponential backoff and full jitter, honouring ``Retry-After``
  (capped at ``backoff_max``). ``timeout`` bounds connecting, each wait for data, and the time
  until the whole body is in (headers sent byte by byte are bounded per byte only). When a
  request runs out of retries (or the task is cancelled) no new request is started, those in
  flight finish their current attempt and are delivered, then :class:`IhcRetriesExhaustedError`
  (:class:`IhcCancelledError`) lists the requests left unanswered.
* **Permanent** failures (:class:`IhcPermanentError`: other 4xx, redirects, TLS errors, bad
  settings, answers that break the contract or exceed the size cap) are raised at once and no
  new request is sent.

The names callers use from :mod:`~ihc_attribution.ihc.errors`, :mod:`~ihc_attribution.ihc.settings`
and :mod:`~ihc_attribution.ihc.answers` can be imported from here too.
"""

from __future__ import annotations

import hashlib

import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter

from ihc_attribution.ihc.answers import (SUCCESS_STATUSES, IhcRequest, IhcResult, IhcRow, PartialFailure,
                                         PreparedRequest, check_answer, prepare_request, refusal)
from ihc_attribution.ihc.dispatch import GaveUp, SendProgress, SendSummary, dispatch
from ihc_attribution.ihc.errors import (IhcCancelledError, IhcConfigurationError, IhcContractError, IhcError,
                                        IhcPermanentError, IhcRejectedJourneysError, IhcResponseTooLargeError,
                                        IhcRetriesExhaustedError)
from ihc_attribution.ihc.settings import KNOWN_EXTRAS, IhcSettings, Redactor, clean_api_key, parse_settings

__all__ = [
    "KNOWN_EXTRAS", "IhcCancelledError", "IhcClient", "IhcConfigurationError", "IhcContractError", "IhcError",
    "IhcPermanentError", "IhcRejectedJourneysError", "IhcRequest", "IhcResponseTooLargeError", "IhcResult",
    "IhcRetriesExhaustedError", "IhcRow", "IhcSettings", "PartialFailure", "Redactor", "SendProgress",
    "SendSummary", "clean_api_key", "parse_retry_after", "parse_settings",
]

log = logging.getLogger(__name__)

#: Statuses worth another attempt: rate limiting and transient server or gateway failures.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Header set by the project's local IHC double on every answer.
LOCAL_DOUBLE_HEADER = "X-IHC-Local-Double"
#: Answer size cap when ``max_response_bytes`` is not set: 1 MiB plus 4 bytes per byte sent.
DEFAULT_RESPONSE_BASE_BYTES = 1 << 20
DEFAULT_RESPONSE_BYTES_PER_SENT_BYTE = 4

_CHUNK = 64 * 1024


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


class _Transient(Exception):
    """A failed attempt worth retrying."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


class IhcClient:
    """Send customer journeys to the IHC API, concurrently, with retries and answer checks.

    :param base_url: scheme, host and port of the service, e.g. ``https://api.ihc-attribution.com``.
    :param api_key: sent as header ``x-api-key``, stripped; never logged.
    :param conv_type_id: trained conversion type, query parameter ``conv_type_id``.
    :param sleep: waits between attempts; tests inject a no-op. By default the waits end early
        when the call stops (a request gave up, a permanent error, :meth:`cancel`).
    :param settings: the other fields of :class:`IhcSettings` (``timeout``, ``max_retries``,
        ``verify``, ``cert``, ``proxies``, ...).
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
        self._session: requests.Session | None = None
        self._stop = threading.Event()
        self._cancelled = False

    @property
    def account_digest(self) -> str:
        """A digest of the API key: tells accounts apart (answers are reused per account), reveals no key."""
        return hashlib.sha256(f"ihc-account:{self._api_key}".encode()).hexdigest()[:16]

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

        ``requests`` is read lazily and ``on_result`` and ``progress`` are called in the calling
        thread, in completion order (see :func:`~ihc_attribution.ihc.dispatch.dispatch`).

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
            total = len(requests)
        summary = summary if summary is not None else SendSummary()
        self._stop = stop = threading.Event()
        if self._cancelled:
            stop.set()
        if self._session is None:
            self._session = make_session(self.settings.max_concurrency)

        def send(request: IhcRequest) -> Callable[[], IhcResult]:
            return partial(self._send, prepare_request(request, self.settings.redistribution_parameter), stop)

        last_errors = dispatch(requests, send, on_result, max_concurrency=self.settings.max_concurrency, stop=stop,
                               summary=summary, progress=progress, total=total)
        if last_errors:
            self._raise_unanswered(summary, last_errors)
        return summary

    # --- one request, its retries and its attempts

    def _send(self, sent: PreparedRequest, stop: threading.Event) -> IhcResult:
        """Send one request until answered; raise GaveUp when giving up, or a permanent error."""
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

        try:
            return self._retrying(sent.request.request_id, stop)(attempt)
        except _Transient as exc:
            raise GaveUp(str(exc), attempts) from None

    def _retrying(self, request_id: Any, stop: threading.Event) -> tenacity.Retrying:
        s = self.settings
        jitter = tenacity.wait_random_exponential(multiplier=s.backoff_base, max=s.backoff_max)

        def wait(state: tenacity.RetryCallState) -> float:
            retry_after = state.outcome.exception().retry_after
            return jitter(state) if retry_after is None else min(retry_after, s.backoff_max)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            log.warning("IHC request %r: %s; retry %d/%d in %.2f s", request_id, state.outcome.exception(),
                        state.attempt_number, s.max_retries, state.next_action.sleep)

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(s.max_retries + 1) | tenacity.stop_when_event_set(stop),
            wait=wait, retry=tenacity.retry_if_exception_type(_Transient), sleep=self._sleep or stop.wait,
            before_sleep=before_sleep, reraise=True,
        )

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
            raise IhcConfigurationError(f"TLS error talking to {self.url}: {self._redact(str(exc))}; check the "
                                        "host, the scheme and the extras verify and cert", request_id=request_id) from None
        except (requests.Timeout, requests.ConnectionError, urllib3.exceptions.HTTPError) as exc:
            if time.monotonic() >= deadline:
                raise _Transient(f"Timeout: no complete answer within {s.timeout:g} s") from None
            raise _Transient(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
        except requests.RequestException as exc:
            raise IhcConfigurationError(f"IHC request {request_id!r} could not be sent: {type(exc).__name__}: "
                                        f"{self._redact(str(exc))}", request_id=request_id) from None
        return self._interpret(sent, response, content, number)

    def _read(self, response: requests.Response, sent: PreparedRequest, deadline: float) -> bytes:
        """The decoded body, at most the size cap, complete before the deadline."""
        s, request_id = self.settings, sent.request.request_id
        cap = s.max_response_bytes or DEFAULT_RESPONSE_BASE_BYTES + DEFAULT_RESPONSE_BYTES_PER_SENT_BYTE * len(sent.body)
        chunks, size = [], 0
        # read1 returns what has arrived, so a trickling body still meets the deadline check, and
        # decodes at most _CHUNK bytes at a time, so a compressed answer is never inflated at once.
        while chunk := response.raw.read1(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > cap:
                raise IhcResponseTooLargeError(
                    f"IHC request {request_id!r}: the HTTP {response.status_code} answer is larger than the cap of "
                    f"{cap:,} bytes (decoded); not retried. Raise the extra max_response_bytes if such answers are "
                    "expected", request_id=request_id, status_code=response.status_code)
            if time.monotonic() >= deadline:
                raise _Transient(f"Timeout: no complete answer within {s.timeout:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _interpret(self, sent: PreparedRequest, response: requests.Response, content: bytes, number: int) -> IhcResult:
        """What an answer means: a result, a transient failure or a permanent error."""
        status, request_id = response.status_code, sent.request.request_id
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in RETRYABLE_STATUSES:
            raise _Transient(f"HTTP {status}", retry_after)
        text = content.decode("utf-8", errors="replace")
        if status not in SUCCESS_STATUSES:
            raise self._refusal(status, text, request_id)
        try:
            body = json.loads(content)
        except ValueError:
            raise IhcContractError(f"IHC request {request_id!r}: HTTP {status} answer is not JSON: "
                                   f"{self._redact.excerpt(text)!r}", request_id=request_id, status_code=status) from None
        code = body.get("statusCode", status) if isinstance(body, dict) else status
        # Some gateways report errors in the body of an HTTP 200; treat them like the status.
        if code in RETRYABLE_STATUSES:
            raise _Transient(f"statusCode {code} in an HTTP {status} answer", retry_after)
        if type(code) is int and code >= 300:
            raise self._refusal(code, text, request_id)
        local_double = response.headers.get(LOCAL_DOUBLE_HEADER, "").lower() == "true"
        return check_answer(sent, body, status, number, local_double, self._redact.excerpt)

    def _refusal(self, status: int, text: str, request_id: Any) -> IhcError:
        return refusal(status, text, request_id, self.settings.conv_type_id, self.url, self._redact.excerpt)

    def _raise_unanswered(self, summary: SendSummary, last_errors: dict[Any, str]) -> None:
        ids = list(last_errors)
        kind = IhcCancelledError if self._cancelled else IhcRetriesExhaustedError
        reason = "the task was cancelled" if self._cancelled else f"up to {self.settings.max_retries} retries"
        shown = ", ".join(repr(request_id) for request_id in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise kind(f"{len(ids)} IHC request(s) not answered after {reason}: {shown}; last error: {last_errors[ids[0]]}. "
                   f"{summary.requests_answered} answered request(s) were delivered; requests after the failure were "
                   "not sent.", request_ids=ids, last_errors=last_errors, summary=summary)


def make_session(max_concurrency: int) -> requests.Session:
    """A session with a connection per worker and no urllib3 retries (tenacity retries)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
