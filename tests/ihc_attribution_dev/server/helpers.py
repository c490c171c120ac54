"""Builders of request rows and a small HTTP helper shared by the local IHC double tests."""

from __future__ import annotations

from typing import Any

import requests

KEY = "test-key-1"
COMPUTE = "/v1/compute_ihc"
UNITS = 10_000


def row(
    conversion_id: Any = "c1",
    session_id: Any = "s1",
    timestamp: str = "2024-01-01 10:00:00",
    channel_label: str = "Direct Traffic",
    holder_engagement: int = 1,
    closer_engagement: int = 1,
    conversion: int = 0,
    impression_interaction: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """One request row; ``overrides`` may replace or add fields (use ``None`` values to drop one)."""
    out = {
        "conversion_id": conversion_id,
        "session_id": session_id,
        "timestamp": timestamp,
        "channel_label": channel_label,
        "holder_engagement": holder_engagement,
        "closer_engagement": closer_engagement,
        "conversion": conversion,
        "impression_interaction": impression_interaction,
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def journey(
    conversion_id: Any, timestamps: list[str], channels: list[str] | None = None, **flags: list[int]
) -> list[dict]:
    """Rows of one journey; the last session carries ``conversion`` = 1 unless flags say otherwise."""
    n = len(timestamps)
    channels = channels or ["Direct Traffic"] * n
    rows = []
    for i, ts in enumerate(timestamps):
        fields = {name: values[i] for name, values in flags.items()}
        fields.setdefault("conversion", int(i == n - 1))
        rows.append(row(conversion_id, f"{conversion_id}-s{i}", ts, channels[i], **fields))
    return rows


def post(
    base_url: str,
    body: Any,
    *,
    key: str | None = KEY,
    conv_type_id: str | None = "demo",
    session: requests.Session | None = None,
    timeout: float = 10.0,
    raw: bytes | None = None,
) -> requests.Response:
    """POST ``body`` (JSON) or ``raw`` bytes to compute_ihc."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    params = {"conv_type_id": conv_type_id} if conv_type_id is not None else {}
    sender = session or requests
    if raw is not None:
        return sender.post(base_url + COMPUTE, params=params, data=raw, headers=headers, timeout=timeout)
    return sender.post(base_url + COMPUTE, params=params, json=body, headers=headers, timeout=timeout)


def units(value: float) -> int:
    """A 4-decimal answer value as an integer of 1e-4, failing if it has more decimals."""
    scaled = value * UNITS
    assert abs(scaled - round(scaled)) < 1e-6, f"{value} has more than 4 decimals"
    return round(scaled)
