"""The request and response bodies of ``POST /v1/compute_ihc``, checked as the production service does.

A body that cannot be read at all (not JSON, no ``customer_journeys`` list, a row that is not an
object or has no usable ``conversion_id``, a malformed ``redistribution_parameter``) is a 400.
A journey with an invalid row (missing field, bad timestamp, flag not 0/1, repeated session id)
fails alone: it is listed in ``partialFailureErrors`` and the rest of the request is answered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ihc_attribution_dev.server.model import PHASES, RedistributionRule, SessionCredit, Touchpoint

#: Accepted ``timestamp`` formats: the production service takes an optional UTC offset.
TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S %z")

DIRECTIONS = ("earlier_sessions_only", "any_session", "later_sessions_only")
FLAGS = ("holder_engagement", "closer_engagement", "conversion", "impression_interaction")
REQUIRED_FIELDS = ("session_id", "timestamp", "channel_label", *FLAGS)
# At most this many row problems are spelled out per failed journey.
MAX_MESSAGES = 5


class BadRequest(ValueError):
    """The body cannot be processed at all (HTTP 400); the message says why."""


@dataclass
class JourneyInput:
    """The rows of one ``conversion_id``, in the order they were sent."""

    conversion_id: str | int
    rows: list[tuple[int, dict]] = field(default_factory=list)  # (index in customer_journeys, row)


@dataclass
class ParsedRequest:
    """A readable request body: journeys in order of first appearance, and the row count."""

    journeys: list[JourneyInput]
    n_rows: int
    redistribution: dict[str, RedistributionRule]


_PLAIN_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


def parse_timestamp(text: str) -> datetime:
    """Parse a row ``timestamp`` (``%Y-%m-%d %H:%M:%S``, optionally `` %z``) to an aware UTC datetime.

    A timestamp without offset is taken as UTC. Raises ``ValueError`` for anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"timestamp must be a string, got {type(text).__name__}")
    # The common form without offset, read without strptime (a third of the model's time before).
    if _PLAIN_TIMESTAMP.fullmatch(text):
        try:
            return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                            int(text[14:16]), int(text[17:19]), tzinfo=timezone.utc)
        except ValueError:
            pass  # strptime below gives the same answer, or the same error
    for fmt in TIMESTAMP_FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    raise ValueError(f"timestamp {text!r} does not match '%Y-%m-%d %H:%M:%S' (optionally followed by ' %z')")


def parse_redistribution(obj: object) -> dict[str, RedistributionRule]:
    """Validate a ``redistribution_parameter`` object; raise ``ValueError`` saying what is wrong."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ValueError("redistribution_parameter must be an object keyed by phase")
    rules: dict[str, RedistributionRule] = {}
    for phase, spec in obj.items():
        where = f"redistribution_parameter.{phase}"
        if phase not in PHASES:
            raise ValueError(f"{where}: unknown phase, expected one of {', '.join(PHASES)}")
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be an object")
        missing = [k for k in ("direction", "receive_threshold", "redistribution_channel_labels") if k not in spec]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        direction = spec["direction"]
        if direction not in DIRECTIONS:
            raise ValueError(f"{where}.direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        threshold = spec["receive_threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"{where}.receive_threshold must be a number, got {threshold!r}")
        labels = spec["redistribution_channel_labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{where}.redistribution_channel_labels must be a list of strings")
        rules[phase] = RedistributionRule(direction, float(threshold), frozenset(labels))
    return rules


def parse_body(raw: bytes) -> ParsedRequest:
    """Read the JSON body and group its rows by ``conversion_id``; raise :class:`BadRequest`."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {_json_type(body)}")
    rows = body.get("customer_journeys")
    if not isinstance(rows, list):
        raise BadRequest("body needs 'customer_journeys': a list of session rows")
    if not rows:
        raise BadRequest("'customer_journeys' is empty: send at least one session row")
    try:
        redistribution = parse_redistribution(body.get("redistribution_parameter"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

    journeys: dict[tuple[type, Any], JourneyInput] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(f"customer_journeys[{index}] must be an object, got {_json_type(row)}")
        conv_id = row.get("conversion_id")
        if not _is_id(conv_id):
            problem = "is missing" if conv_id is None else f"must be a non-empty string or an integer, got {conv_id!r}"
            raise BadRequest(f"customer_journeys[{index}].conversion_id {problem}")
        # Keyed by type too: "1" and 1 are different conversions, as they are in JSON.
        journey = journeys.setdefault((type(conv_id), conv_id), JourneyInput(conv_id))
        journey.rows.append((index, row))
    return ParsedRequest(list(journeys.values()), len(rows), redistribution)


def validate_journey(journey: JourneyInput) -> list[Touchpoint]:
    """The journey's rows as touchpoints; raise ``ValueError`` listing what is wrong with them."""
    seen: dict[tuple[type, Any], int] = {}  # session ids met so far, and their row index
    checked = [_check_row(index, row, seen) for index, row in journey.rows]
    problems = [c for c in checked if isinstance(c, str)]
    if len(problems) > MAX_MESSAGES:
        problems[MAX_MESSAGES:] = [f"and {len(problems) - MAX_MESSAGES} more invalid rows"]
    if problems:
        raise ValueError("invalid rows: " + " | ".join(problems))
    return checked


def _check_row(index: int, row: dict, seen: dict[tuple[type, Any], int]) -> Touchpoint | str:
    """The row as a touchpoint, or the line that says what is wrong with it."""
    missing = [name for name in REQUIRED_FIELDS if row.get(name) is None]
    if missing:
        # A row without all its fields is not checked further, and its session id is not
        # remembered: the other rows' messages would otherwise blame it for a repeat.
        return f"customer_journeys[{index}]: missing {', '.join(missing)}"
    problems = _session_id_problems(index, row["session_id"], seen)
    try:
        timestamp = parse_timestamp(row["timestamp"])
    except ValueError as exc:
        problems.append(str(exc))
    channel = row["channel_label"]
    if not isinstance(channel, str) or not channel:
        problems.append(f"channel_label must be a non-empty string, got {channel!r}")
    # bool is an int in Python, but true/false is not the 0/1 the contract asks for.
    problems += [f"{flag} must be 0 or 1, got {row[flag]!r}" for flag in FLAGS
                 if type(row[flag]) is not int or row[flag] not in (0, 1)]
    if problems:
        return f"customer_journeys[{index}]: " + "; ".join(problems)
    # Touchpoint's fields end with the flags, in the order of FLAGS.
    return Touchpoint(row["session_id"], timestamp, channel, *(row[flag] for flag in FLAGS))


def _session_id_problems(index: int, session_id: Any, seen: dict[tuple[type, Any], int]) -> list[str]:
    if not _is_id(session_id):
        return [f"session_id must be a non-empty string or an integer, got {session_id!r}"]
    first = seen.setdefault((type(session_id), session_id), index)
    return [f"session_id {session_id!r} repeats customer_journeys[{first}]"] if first != index else []


def value_rows(journey: JourneyInput, credits: Sequence[SessionCredit]) -> list[dict]:
    """Answer rows of one journey, in the order its rows were sent, ids as they were sent."""
    by_session = {(type(c.session_id), c.session_id): c for c in credits}
    keys = ((type(row["session_id"]), row["session_id"]) for _, row in journey.rows)
    # SessionCredit's fields: session_id, initializer, holder, closer, ihc.
    return [{"conversion_id": journey.conversion_id, **vars(by_session[key])} for key in keys]


def _is_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value != "")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
