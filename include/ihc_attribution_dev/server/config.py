"""Configuration of the local IHC double: accepted keys, conversion types, limits, faults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ihc_attribution_dev.server.model import FITTED_PARAMS, PhaseWeights, TypeModel

#: Limits per request of the production service's account types: (max journeys, max sessions).
PROFILES: dict[str, tuple[int, int]] = {
    "standard": (100, 3000),
    "free": (100, 200),
}

#: Environment variable with accepted API keys, comma separated (read by the CLI only).
API_KEYS_ENV = "IHC_API_KEYS"


@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject, all off by default: one field per CLI option (``__main__.FAULT_OPTIONS``).

    Decisions are drawn from ``seed`` and the request number, so the same seed gives the same
    faults per request number. Pick ``hang_seconds`` longer than the client's timeout.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_every: int = 0
    retry_after: int = 1
    hang_rate: float = 0.0
    hang_seconds: float = 35.0
    partial_failure_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "hang_rate", "partial_failure_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("latency_ms", "hang_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("rate_limit_every", "retry_after", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (name != "seed" and value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    @property
    def active(self) -> list[str]:
        """Names and values of the faults that are switched on, for the startup log."""
        out = []
        if self.latency_ms:
            out.append(f"latency {self.latency_ms:g} ms")
        if self.error_rate:
            out.append(f"error-rate {self.error_rate:g}")
        if self.rate_limit_every:
            out.append(f"429 every {self.rate_limit_every} requests (Retry-After {self.retry_after} s)")
        if self.hang_rate:
            out.append(f"hang-rate {self.hang_rate:g} ({self.hang_seconds:g} s)")
        if self.partial_failure_rate:
            out.append(f"partial-failure-rate {self.partial_failure_rate:g}")
        return out


@dataclass(frozen=True)
class ServerConfig:
    """Everything the local IHC double needs; ``api_keys`` is required and never has a default.

    Limits left at ``None`` come from ``profile`` (:data:`PROFILES`). ``models`` maps a conversion
    type to its parameter file's model; the others get the built-in type A parameters with ``weights``.
    """

    api_keys: tuple[str, ...]
    conv_type_ids: tuple[str, ...] = ("demo",)
    profile: str = "standard"
    max_journeys: int | None = None
    max_sessions: int | None = None
    weights: PhaseWeights = field(default_factory=PhaseWeights)
    faults: FaultConfig = field(default_factory=FaultConfig)
    models: Mapping[str, TypeModel] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8765

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ (lists become tuples, limits get resolved).
        keys = (self.api_keys,) if isinstance(self.api_keys, str) else tuple(self.api_keys)
        keys = tuple(k for k in keys if k)
        if not keys:
            raise ValueError(
                "no API key configured: the local IHC double accepts only the keys it is given "
                f"(--api-key KEY, repeatable, or {API_KEYS_ENV}=key1,key2)"
            )
        object.__setattr__(self, "api_keys", keys)
        conv_types = (self.conv_type_ids,) if isinstance(self.conv_type_ids, str) else tuple(self.conv_type_ids)
        if not conv_types or not all(isinstance(c, str) and c for c in conv_types):
            raise ValueError("conv_type_ids must hold at least one non-empty id")
        object.__setattr__(self, "conv_type_ids", conv_types)
        unserved = [c for c in self.models if c not in conv_types]
        if unserved:
            raise ValueError(
                f"model parameters given for conv_type_id {', '.join(map(repr, unserved))}, which this server "
                f"does not serve (known: {', '.join(conv_types)}); add --conv-type-id for it"
            )
        object.__setattr__(self, "models", dict(self.models))
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
        default_journeys, default_sessions = PROFILES[self.profile]
        for name, default in (("max_journeys", default_journeys), ("max_sessions", default_sessions)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def model_for(self, conv_type_id: str) -> TypeModel:
        """The model answering ``conv_type_id``: its parameter file's, else the built-in type A."""
        model = self.models.get(conv_type_id)
        if model is None:
            return TypeModel(FITTED_PARAMS, self.weights)
        return model

    def describe_models(self) -> str:
        """One phrase per served conversion type: where its model comes from (for the startup log)."""
        parts = []
        for conv_type in self.conv_type_ids:
            model = self.model_for(conv_type)
            text = f"{conv_type}: {model.source}"
            fit = model.fit or {}
            if "mae_cross_validated" in fit:
                text += (f" (calibrated on {fit.get('multi_session_journeys', '?')} journeys of 2+ sessions, "
                         f"cross-validated MAE {fit['mae_cross_validated']}, linear {fit.get('mae_linear', '?')}"
                         + (", POOR FIT" if fit.get("verdict") == "poor" else "") + ")")
            parts.append(text)
        return "; ".join(parts)
