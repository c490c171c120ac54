"""Requests to the IHC API and the checks on its answers, without any HTTP.

An answer is accepted only if every session sent comes back exactly once (except those of journeys
the service reports as failed), every credit is in [0, 1] and the ``ihc`` of every journey sums to 1;
anything else is an :class:`IhcContractError`, since asking again would not change it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ihc_attribution.ihc.errors import IhcConfigurationError, IhcContractError, IhcError

#: Body ``statusCode`` values of a usable answer: full success and partial success.
SUCCESS_STATUSES = frozenset({200, 206})
#: How far a credit may stray from [0, 1], and a journey's ihc sum from 1 (4-decimal rounding).
SUM_TOLERANCE = 1e-6

_CREDITS = ("initializer", "holder", "closer", "ihc")

_WRONG_KEY = "the API key is missing or wrong; set the right key as the password of the IHC connection"
# What to change, by HTTP status of a refused request.
_HINTS = {
    400: "the service rejected the request body as malformed; check the journey rows and the "
         "redistribution_parameter extra of the connection",
    401: _WRONG_KEY,
    403: _WRONG_KEY,
    404: "the service does not know conv_type_id {conv_type_id!r}; set the extra conv_type_id of the IHC "
         "connection to a trained conversion type",
    413: "the request is over a limit of the service; lower the extras max_journeys_per_request / "
         "max_sessions_per_request of the IHC connection (free test accounts allow 200 sessions per request)",
}


@dataclass(frozen=True)
class IhcRequest:
    """One API request: the rows of whole journeys as the API expects them (``conversion_id``, ``session_id``,
    ``timestamp``, ``channel_label``, ``holder_engagement``, ``closer_engagement``, ``conversion``,
    ``impression_interaction``); ``request_id`` is unique per call (e.g. its checkpoint key)."""

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
    """A validated answer to one request: a row per session sent except those of the ``failed`` journeys;
    ``status_code`` 200, or 206 with failed journeys; ``local_double``: from the project's local IHC double."""

    request_id: str | int
    rows: list[IhcRow]
    failed: list[PartialFailure]
    attempts: int
    status_code: int
    local_double: bool = False


# str(conversion_id) -> {str(session_id): (conversion_id, session_id) as sent}
Journeys = dict[str, dict[str, tuple[Any, Any]]]


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to send: its serialised body and the sessions to expect back."""

    request: IhcRequest
    body: bytes
    journeys: Journeys


def prepare_request(request: IhcRequest, redistribution_parameter: Mapping[str, Any] | None) -> PreparedRequest:
    """Serialise a request and note its sessions; ValueError for no rows, a row without ids or a session twice."""
    if not request.rows:
        raise ValueError(f"IHC request {request.request_id!r} has no rows")
    journeys: Journeys = {}
    for row in request.rows:
        try:
            conversion_id, session_id = row["conversion_id"], row["session_id"]
        except (KeyError, TypeError):
            raise ValueError(f"IHC request {request.request_id!r}: every row needs conversion_id and session_id") from None
        sessions = journeys.setdefault(str(conversion_id), {})
        if str(session_id) in sessions:
            raise ValueError(f"IHC request {request.request_id!r}: session {session_id!r} appears twice "
                             f"in journey {conversion_id!r}")
        sessions[str(session_id)] = (conversion_id, session_id)
    payload: dict[str, Any] = {"customer_journeys": [dict(row) for row in request.rows]}
    if redistribution_parameter is not None:
        payload["redistribution_parameter"] = redistribution_parameter
    return PreparedRequest(request, json.dumps(payload, separators=(",", ":")).encode(), journeys)


class _Invalid(Exception):
    """What is wrong with an answer."""


def check_answer(
    sent: PreparedRequest, body: Any, http_status: int, attempts: int, local_double: bool,
    excerpt: Callable[[str], str],
) -> IhcResult:
    """Check an answer against what was sent and return it typed, or raise IhcContractError saying what is wrong.

    Ids are compared as text (JSON may bring numbers back as strings) and returned as they were sent.
    Credits just outside [0, 1], within the rounding tolerance, are stored as the bound.
    """
    request_id = sent.request.request_id
    try:
        if not isinstance(body, dict):
            raise _Invalid(f"expected a JSON object, got {type(body).__name__}")
        code = body.get("statusCode", http_status)
        if code not in SUCCESS_STATUSES:
            raise _Invalid(f"statusCode {code!r} is not 200 or 206")
        values, errors = body.get("value"), body.get("partialFailureErrors") or []
        if not isinstance(values, list):
            raise _Invalid("'value' is missing or not a list")
        if not isinstance(errors, list):
            raise _Invalid("'partialFailureErrors' is not a list")
        failed = _failures(errors, sent.journeys, excerpt)
        rows, sums = _rows(values, sent.journeys, failed, excerpt)
        off = [(conv, round(total, 8)) for conv, total in sums.items() if abs(total - 1) > SUM_TOLERANCE]
        if off:
            raise _Invalid(f"ihc does not sum to 1 in {len(off)} journey(s): {examples(off)}")
    except _Invalid as problem:
        raise IhcContractError(f"IHC request {request_id!r}: invalid answer: {problem}",
                               status_code=http_status) from None
    return IhcResult(request_id, rows, list(failed.values()), attempts, int(code), local_double)


def _failures(errors: list[Any], journeys: Journeys, excerpt: Callable[[str], str]) -> dict[str, PartialFailure]:
    """The journeys listed in ``partialFailureErrors``, by conversion id as text. The entries' field names
    are not documented, so the usual spellings are accepted."""
    failed: dict[str, PartialFailure] = {}
    for entry in errors:
        fields = entry if isinstance(entry, dict) else {}
        conv_id = next((fields[k] for k in ("conversion_id", "conversionId", "conv_id") if fields.get(k) is not None), None)
        if conv_id is None:
            raise _Invalid(f"partial failure without a conversion id: {excerpt(json.dumps(entry))!r}")
        if (key := str(conv_id)) not in journeys:
            raise _Invalid(f"partial failure for conversion {key!r}, which was not sent")
        message = next((fields[k] for k in ("message", "error", "errorMessage", "detail", "reason") if fields.get(k)),
                       json.dumps(entry, default=str))
        original = next(iter(journeys[key].values()))[0]
        failed.setdefault(key, PartialFailure(original, excerpt(str(message))))
    return failed


def _rows(
    values: list[Any], journeys: Journeys, failed: Mapping[str, PartialFailure], excerpt: Callable[[str], str]
) -> tuple[list[IhcRow], dict[str, float]]:
    """The answer's rows as sent, and each journey's ihc sum; every session exactly once."""
    rows: list[IhcRow] = []
    sums: dict[str, float] = {}
    returned: set[tuple[str, str]] = set()
    unknown: list[tuple[str, str]] = []
    duplicates: list[tuple[str, str]] = []
    for item in values:
        if not isinstance(item, dict) or "conversion_id" not in item or "session_id" not in item:
            raise _Invalid(f"row without conversion_id/session_id: {excerpt(json.dumps(item))!r}")
        key = (str(item["conversion_id"]), str(item["session_id"]))
        sent = journeys.get(key[0], {}).get(key[1])
        if sent is None or key in returned:
            (unknown if sent is None else duplicates).append(key)
            continue
        if key[0] in failed:
            raise _Invalid(f"rows returned for failed journey {key[0]!r}")
        returned.add(key)
        credits = _credits(item, key)
        sums[key[0]] = sums.get(key[0], 0.0) + credits[3]
        rows.append(IhcRow(*sent, *(min(max(value, 0.0), 1.0) for value in credits)))
    missing = [(conv, session) for conv, sessions in journeys.items() if conv not in failed
               for session in sessions if (conv, session) not in returned]
    for problem, keys in (("row(s) for sessions not sent", unknown), ("session(s) returned twice", duplicates),
                          ("session(s) sent but not returned", missing)):
        if keys:
            raise _Invalid(f"{len(keys)} {problem}: {examples(keys)}")
    return rows, sums


def _credits(item: Mapping[str, Any], key: tuple[str, str]) -> list[float]:
    values = [item.get(column) for column in _CREDITS]
    # type() rather than isinstance(): true and false are ints to isinstance.
    if not all(type(value) in (int, float) and math.isfinite(value) for value in values):
        raise _Invalid(f"row {key[0]!r}/{key[1]!r} has missing or non-numeric values")
    for column, value in zip(_CREDITS, values):
        if not -SUM_TOLERANCE <= value <= 1 + SUM_TOLERANCE:
            raise _Invalid(f"row {key[0]!r}/{key[1]!r} has {column} {value} outside [0, 1]")
    return [float(value) for value in values]


def examples(items: Iterable[Any], limit: int = 5) -> str:
    """The first ``limit`` items and how many more, for messages."""
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def refusal(status: int, text: str, request_id: Any, conv_type_id: str, url: str,
            excerpt: Callable[[str], str]) -> IhcError:
    """The error for an answer refusing a request (but 429 and the transient 5xx), saying what to change:
    :class:`IhcConfigurationError` for 3xx and 4xx, :class:`IhcContractError` for other 5xx."""
    if 300 <= status < 400:
        hint = f"the service answered with a redirect; point the connection at the final URL instead of {url}"
    else:
        hint = _HINTS.get(status, "unexpected answer; not retried").format(conv_type_id=conv_type_id)
    message = f"IHC request {request_id!r} failed with HTTP {status}: {hint}"
    detail = _service_message(text, excerpt)
    if detail:
        message += f" (service said: {detail!r})"
    kind = IhcConfigurationError if status < 500 else IhcContractError
    return kind(message, status_code=status)


def _service_message(text: str, excerpt: Callable[[str], str]) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return excerpt(text)
    names = ("message", "detail", "error", "errorMessage")
    found = next((body[name] for name in names if body.get(name)), None) if isinstance(body, dict) else None
    return excerpt(text if found is None else str(found))
