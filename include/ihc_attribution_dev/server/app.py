"""FastAPI application of the local IHC double: the ``compute_ihc`` contract, faults, health and stats.

Checks run in this order, so that a misconfigured client always gets the same fatal answer:
injected latency and hang, 403 (key), 400 (no conv_type_id), 404 (unknown conv_type_id),
injected 429, injected 500/503, 400 (body), 413 (limits), and finally the answer: 200, or 206
with partial failures.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.contract import (
    BadRequest,
    JourneyInput,
    parse_body,
    validate_journey,
    value_rows,
)
from ihc_attribution_dev.server.model import Touchpoint, attribute_journeys, round_credits

logger = logging.getLogger("ihc_attribution_dev.server")

#: Header on every answer, so that nobody mistakes the double for the production service.
LOCAL_DOUBLE_HEADER = "X-IHC-Local-Double"
#: Scope key with the event loop's time when the request reached the application.
RECEIVED_AT = "ihc.received_at"

COMPUTE_PATH = "/v1/compute_ihc"


@dataclass
class Stats:
    """Counters of ``compute_ihc`` requests, for tests and for watching a run."""

    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    journeys: int = 0
    sessions: int = 0
    failed_journeys: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``by_status`` keyed by the status code as text."""
        return {**asdict(self), "by_status": {str(k): v for k, v in sorted(self.by_status.items())}}


@dataclass(frozen=True)
class FaultPlan:
    """What happens to one request, drawn up front from the seed and the request number."""

    hang: bool
    error_status: int | None
    rate_limited: bool
    rng: random.Random  # continues with the per-journey partial-failure draws


def plan_faults(config: ServerConfig, number: int) -> FaultPlan:
    """Fault decisions of request ``number`` (1-based).

    Every request draws the same values in the same order whatever the rates, so the faults of
    request N depend only on the seed and N: runs with one client thread repeat exactly.
    """
    faults = config.faults
    rng = random.Random(f"{faults.seed}:{number}")
    hang = rng.random() < faults.hang_rate
    error = rng.random() < faults.error_rate
    status = 500 if rng.random() < 0.5 else 503
    limited = faults.rate_limit_every > 0 and number % faults.rate_limit_every == 0
    return FaultPlan(hang, status if error else None, limited, rng)


class LocalDoubleHeaderMiddleware:
    """Adds ``X-IHC-Local-Double: true`` to every HTTP answer (errors and docs included)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RECEIVED_AT] = asyncio.get_running_loop().time()

        async def send_with_header(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (LOCAL_DOUBLE_HEADER.lower().encode(), b"true")]
            await send(message)

        await self.app(scope, receive, send_with_header)


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """JSON error body: ``{"statusCode", "error", "message", ...extra}``."""
    body = {"statusCode": status, "error": HTTPStatus(status).phrase, "message": message, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def banner(config: ServerConfig) -> str:
    """The startup line: what this server is, and how it is set up (never the keys themselves)."""
    faults = ", ".join(config.faults.active) or "none"
    return (
        "IHC-compatible LOCAL DEVELOPMENT DOUBLE, not the real IHC attribution API: "
        f"conv_type_ids {', '.join(config.conv_type_ids)}; limits {config.max_journeys} journeys and "
        f"{config.max_sessions} sessions per request (profile {config.profile}); "
        f"{len(config.api_keys)} API key(s) accepted; models: {config.describe_models()}; "
        f"faults: {faults} (seed {config.faults.seed})"
    )


# The OpenAPI document's row schema only: contract.py checks the rows itself (400 or 206, never 422).
class _Row(BaseModel):
    """One session row; a journey is all rows with one conversion_id."""

    conversion_id: str | int
    session_id: str | int
    timestamp: str = Field(examples=["2024-01-31 23:59:59"], description="%Y-%m-%d %H:%M:%S, optionally followed by ' %z'")
    channel_label: str
    holder_engagement: Literal[0, 1]
    closer_engagement: Literal[0, 1]
    conversion: Literal[0, 1]
    impression_interaction: Literal[0, 1]


_REQUEST_SCHEMA = {"type": "object", "required": ["customer_journeys"], "properties": {
    "customer_journeys": {"type": "array", "items": _Row.model_json_schema()},
    "redistribution_parameter": {"type": "object", "description": "Per phase (initializer, holder, closer): direction, "
                                 "receive_threshold, redistribution_channel_labels."},
}}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"statusCode": 200, "value": [{"conversion_id", "session_id", "initializer", '
                         '"holder", "closer", "ihc"}, ...], "partialFailureErrors": []}'},
    206: {"description": "Some journeys failed: listed in partialFailureErrors "
                         '([{"conversion_id", "message"}]), no value rows for them.'},
    400: {"description": "Malformed body."},
    403: {"description": "Missing or wrong x-api-key."},
    404: {"description": "Unknown conv_type_id."},
    413: {"description": "Over the journeys or sessions limit; the whole request is rejected."},
    429: {"description": "Rate limited (fault injection only), with Retry-After."},
    500: {"description": "Injected server error."},
    503: {"description": "Injected unavailability."},
}


def create_app(config: ServerConfig) -> FastAPI:
    """A new application for ``config``, with its own counters and fault sequence."""
    double = _LocalDouble(config)
    app = FastAPI(
        title="IHC-compatible local double",
        summary="Development and test double of the IHC attribution API (not the real service).",
        lifespan=double.lifespan,
    )
    app.add_middleware(LocalDoubleHeaderMiddleware)
    app.get("/health")(double.health)
    app.get("/stats")(double.get_stats)
    app.post(COMPUTE_PATH, responses=_RESPONSES, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}},
    })(double.compute_ihc)
    return app


class _LocalDouble:
    """The state of one application (its config, counters and fault sequence) and its routes."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stats = Stats()

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI):
        logger.info(banner(self.config))
        yield
        logger.info("IHC local double stopped after %d compute_ihc requests", self.stats.requests)

    async def health(self) -> dict[str, Any]:
        """Liveness: always ``{"status": "ok", "local_double": true}``."""
        return {"status": "ok", "local_double": True}

    async def get_stats(self) -> dict[str, Any]:
        """Request counts by status code, requests in flight, journeys and sessions answered."""
        return self.stats.as_dict()

    async def compute_ihc(
        self,
        request: Request,
        conv_type_id: str | None = Query(None, description="Trained conversion type."),
        x_api_key: str | None = Header(None, description="API key."),
    ) -> JSONResponse:
        """Attribute every journey of the request (each request is normalised on its own)."""
        stats, faults = self.stats, self.config.faults
        # Numbered and planned before the first await: the event loop runs this part atomically.
        stats.requests += 1
        number = stats.requests
        plan = plan_faults(self.config, number)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        # Injected latency is the least response time the client sees, counted from the request's
        # arrival: the double's own work counts toward it, as the real service's computing does.
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer_at = request.scope.get(RECEIVED_AT, started) + faults.latency_ms / 1000
        try:
            if plan.hang:
                await asyncio.sleep(faults.hang_seconds)
            response = self._refusal(conv_type_id, x_api_key) or self._injected_error(plan)
            if response is None:
                # Parsing and the model are CPU work (about 50 ms for 3,000 sessions): a thread keeps
                # the event loop serving other requests, latencies and hangs.
                raw = await request.body()
                response, (journeys, sessions, failed) = await asyncio.to_thread(self._answer, raw, plan, conv_type_id)
                stats.journeys += journeys
                stats.sessions += sessions
                stats.failed_journeys += failed
            await asyncio.sleep(max(answer_at - loop.time(), 0))
        finally:
            stats.in_flight -= 1
        stats.by_status[response.status_code] += 1
        logger.debug("compute_ihc #%d -> %d in %.0f ms", number, response.status_code, (loop.time() - started) * 1000)
        return response

    def _refusal(self, conv_type_id: str | None, api_key: str | None) -> JSONResponse | None:
        """The 403, 400 or 404 of a request that no retry can fix; ``None`` if it may go on."""
        config = self.config
        if not api_key:
            return error_response(403, "missing x-api-key header")
        # Compare every key in constant time, so timing does not tell how much of a key matched.
        if not any(hmac.compare_digest(api_key.encode(), k.encode()) for k in config.api_keys):
            return error_response(403, "invalid API key")
        if not conv_type_id:
            return error_response(400, "missing query parameter conv_type_id")
        if conv_type_id not in config.conv_type_ids:
            return error_response(
                404, f"unknown conv_type_id {conv_type_id!r}; this server knows: {', '.join(config.conv_type_ids)}"
            )
        return None

    def _injected_error(self, plan: FaultPlan) -> JSONResponse | None:
        """The injected 429, 500 or 503 of the request, if its plan has one."""
        faults = self.config.faults
        if plan.rate_limited:
            return error_response(
                429,
                f"rate limited (injected fault: one request in {faults.rate_limit_every} is refused); "
                f"retry after {faults.retry_after} s",
                headers={"Retry-After": str(faults.retry_after)},
                retry_after=faults.retry_after,
            )
        if plan.error_status is not None:
            return error_response(plan.error_status, f"injected fault (error-rate {faults.error_rate:g})")
        return None

    def _answer(self, raw: bytes, plan: FaultPlan, conv_type_id: str) -> tuple[JSONResponse, tuple[int, int, int]]:
        """The 400, 413, 200 or 206 of a request past the other checks, with the journeys answered, the
        sessions answered and the journeys failed (counted in the event loop, not in this thread)."""
        try:
            parsed = parse_body(raw)
        except BadRequest as exc:
            return error_response(400, str(exc)), (0, 0, 0)
        config = self.config
        counts = {"journeys": len(parsed.journeys), "sessions": parsed.n_rows}
        limits = {"max_journeys": config.max_journeys, "max_sessions": config.max_sessions}
        over = [f"{n} {name} (limit {limit})" for (name, n), limit in zip(counts.items(), limits.values()) if n > limit]
        if over:
            response = error_response(
                413,
                f"over the limits per request: {' and '.join(over)}; the whole request is rejected, "
                "split it into smaller requests without splitting a journey",
                limits=limits,
                counts=counts,
            )
            return response, (0, 0, 0)
        model = config.model_for(conv_type_id)
        checked = [(journey, self._check(journey, plan)) for journey in parsed.journeys]
        failures = [outcome for _, outcome in checked if isinstance(outcome, dict)]
        answered = [(journey, outcome) for journey, outcome in checked if not isinstance(outcome, dict)]
        credits = attribute_journeys([touchpoints for _, touchpoints in answered], model.weights, model.params,
                                     parsed.redistribution)
        values = [row for (journey, _), journey_credits in zip(answered, credits)
                  for row in value_rows(journey, round_credits(journey_credits))]
        status = 206 if failures else 200
        response = JSONResponse({"statusCode": status, "value": values, "partialFailureErrors": failures}, status_code=status)
        return response, (len(parsed.journeys) - len(failures), len(values), len(failures))

    def _check(self, journey: JourneyInput, plan: FaultPlan) -> list[Touchpoint] | dict[str, Any]:
        """The journey's touchpoints, or its entry in ``partialFailureErrors``."""
        rate = self.config.faults.partial_failure_rate
        # Drawn for every journey, failed or not, so the sequence does not depend on the data.
        forced = plan.rng.random() < rate
        try:
            touchpoints = validate_journey(journey)
        except ValueError as exc:
            return {"conversion_id": journey.conversion_id, "message": str(exc)}
        if forced:
            message = f"injected fault: journey not attributed (partial-failure-rate {rate:g}); send it again"
            return {"conversion_id": journey.conversion_id, "message": message}
        return touchpoints
