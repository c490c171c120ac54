"""Many IHC requests at once: a thread pool with at most ``max_concurrency`` in flight.

The requests are read lazily and the answers delivered in the calling thread, so the requests
may come from a generator reading a database and the answers may be written to SQLite.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from ihc_attribution.ihc.answers import IhcRequest, IhcResult

log = logging.getLogger(__name__)


class GaveUp(Exception):
    """A request left unanswered: its retries ran out, or the call stopped before it was answered."""

    def __init__(self, problem: str, attempts: int) -> None:
        super().__init__(problem)
        self.attempts = attempts


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
    """Counters of the API stage (one call of ``IhcClient.compute_ihc``, plus checkpoints).

    :param requests_total: requests planned for the run (set by the API stage).
    :param requests_already_done: of those, answered before this call (set by the API stage).
    :param requests_sent: requests sent in this call (at least one attempt started).
    :param requests_answered: requests answered and delivered.
    :param attempts: HTTP attempts of the requests that finished.
    :param retries: attempts beyond the first, of the requests that finished.
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
        """The counters as a plain dict (for XCom and logs)."""
        return asdict(self)


def dispatch(
    requests: Iterable[IhcRequest],
    send: Callable[[IhcRequest], Callable[[], IhcResult]],
    on_result: Callable[[IhcResult], None],
    *,
    max_concurrency: int,
    stop: threading.Event,
    summary: SendSummary,
    progress: Callable[[SendProgress], None] | None = None,
    total: int | None = None,
) -> dict[Any, str]:
    """Run the requests on a thread pool and deliver the answers; return why the unanswered ones were not.

    A request that gives up (:class:`GaveUp`) sets ``stop``: no new request is started, the
    requests in flight finish and are delivered. When answers come in, one request goes out
    before they are delivered, so that the service is not idle while they are stored; the
    others after (with ``max_concurrency`` 1, nothing goes out before the answer is stored).
    Any other exception, from a worker, ``send`` or ``on_result``, is raised at once and the
    requests in flight are abandoned.

    :param send: given a request, in the calling thread, checks it and returns what a worker
        runs to send it (raises ``ValueError`` for a malformed request).
    """
    pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="ihc-client")
    run = _Dispatch(iter(requests), send, pool, max_concurrency, stop, summary, total)
    try:
        run.loop(on_result, progress)
    except BaseException:
        stop.set()
        # Answers still in flight cannot be used now; their workers stop before another attempt.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        summary.elapsed_seconds += time.monotonic() - run.started
    pool.shutdown()
    return run.last_errors


class _Dispatch:
    """One run of :func:`dispatch`: the requests in flight and what came of them."""

    def __init__(self, pending: Iterator[IhcRequest], send: Callable[[IhcRequest], Callable[[], IhcResult]],
                 pool: ThreadPoolExecutor, limit: int, stop: threading.Event, summary: SendSummary,
                 total: int | None) -> None:
        self.pending, self.send, self.pool, self.limit, self.stop = pending, send, pool, limit, stop
        self.summary, self.total = summary, total
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
            self.in_flight[self.pool.submit(self.send(request))] = request.request_id
            self.summary.requests_sent += 1

    def finish(self, future: Future[IhcResult], request_id: Any, on_result: Callable[[IhcResult], None]) -> None:
        """Deliver a finished request's answer and count it, or record that it gave up and stop."""
        self.done += 1
        s = self.summary
        try:
            result = future.result()
        except GaveUp as problem:
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
