"""The sessions of a journey as the model reads them, and the request fields parsed into them.

Sessions are ordered by timestamp, then session id (:func:`chronological`), so that answers do not
depend on the order in which rows arrive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from ihc_attribution_dev.server.family import PHASES

#: Accepted ``timestamp`` formats: the production service takes an optional UTC offset.
TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S %z")

DIRECTIONS = ("earlier_sessions_only", "any_session", "later_sessions_only")


@dataclass(frozen=True)
class Touchpoint:
    """One validated session of a journey, as sent in a request row."""

    session_id: str | int
    timestamp: datetime
    channel_label: str
    holder_engagement: int
    closer_engagement: int
    conversion: int = 0
    impression_interaction: int = 0


@dataclass(frozen=True)
class SessionCredit:
    """The credit of one session in each phase and overall."""

    session_id: str | int
    initializer: float
    holder: float
    closer: float
    ihc: float


@dataclass(frozen=True)
class RedistributionRule:
    """How one phase hands the credit of some channels to the other sessions of a journey.

    :param direction: which sessions receive: ``earlier_sessions_only``, ``any_session`` or
        ``later_sessions_only`` (relative to the session that gives its credit away).
    :param receive_threshold: a session receives only if its own share of the phase is at least this.
    :param channel_labels: channels whose credit in this phase is redistributed.
    """

    direction: str
    receive_threshold: float
    channel_labels: frozenset[str]


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


def chronological(touchpoints: Iterable[Touchpoint]) -> list[Touchpoint]:
    """Sessions ordered by timestamp, then session id (the order the model works in)."""
    return sorted(touchpoints, key=_order_key)


def _order_key(t: Touchpoint) -> tuple:
    # Integer ids sort numerically (9 before 10) and before text ids.
    sid = t.session_id
    return (t.timestamp, 0, sid, "") if isinstance(sid, int) else (t.timestamp, 1, 0, sid)
