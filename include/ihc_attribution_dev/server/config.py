"""Configuration of the local IHC double: accepted keys, conversion types, limits, faults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ihc_attribution_dev.server.model import FITTED_PARAMS, PhaseWeights, TypeModel

#: Limits per request of the production service's account types: (max journeys, max sessions).
PROFILES = {"standard": (100, 3000), "free": (100, 200)}

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
        for name, value in vars(self).items():
            if name in ("rate_limit_every", "retry_after", "seed"):
                if isinstance(value, bool) or not isinstance(value, int) or (name != "seed" and value < 0):
                    raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            elif name.endswith("_rate"):
                if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                    raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
            elif not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    @property
    def active(self) -> list[str]:
        """Names and values of the faults that are switched on, for the startup log."""
        described = [
            (self.latency_ms, f"latency {self.latency_ms:g} ms"),
            (self.error_rate, f"error-rate {self.error_rate:g}"),
            (self.rate_limit_every, f"429 every {self.rate_limit_every} requests (Retry-After {self.retry_after} s)"),
            (self.hang_rate, f"hang-rate {self.hang_rate:g} ({self.hang_seconds:g} s)"),
            (self.partial_failure_rate, f"partial-failure-rate {self.partial_failure_rate:g}"),
        ]
        return [text for on, text in described if on]


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
        # Frozen: normalise through object.__setattr__ (a text becomes a tuple, limits get resolved).
        keys = tuple(k for k in ((self.api_keys,) if isinstance(self.api_keys, str) else self.api_keys) if k)
        if not keys:
            raise ValueError(
                "no API key configured: the local IHC double accepts only the keys it is given "
                f"(--api-key KEY, repeatable, or {API_KEYS_ENV}=key1,key2)"
            )
        conv_types = (self.conv_type_ids,) if isinstance(self.conv_type_ids, str) else tuple(self.conv_type_ids)
        if not conv_types or not all(isinstance(c, str) and c for c in conv_types):
            raise ValueError("conv_type_ids must hold at least one non-empty id")
        unserved = [c for c in self.models if c not in conv_types]
        if unserved:
            raise ValueError(
                f"model parameters given for conv_type_id {', '.join(map(repr, unserved))}, which this server "
                f"does not serve (known: {', '.join(conv_types)}); add --conv-type-id for it"
            )
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
        limits = {}
        for name, default in zip(("max_journeys", "max_sessions"), PROFILES[self.profile]):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            limits[name] = default if value is None else value
        for name, value in {"api_keys": keys, "conv_type_ids": conv_types, "models": dict(self.models), **limits}.items():
            object.__setattr__(self, name, value)

    def model_for(self, conv_type_id: str) -> TypeModel:
        """The model answering ``conv_type_id``: its parameter file's, else the built-in type A."""
        return self.models.get(conv_type_id) or TypeModel(FITTED_PARAMS, self.weights)

    def describe_models(self) -> str:
        """One phrase per served conversion type: where its model comes from (for the startup log)."""
        parts = []
        for conv_type in self.conv_type_ids:
            model = self.model_for(conv_type)
            fit = model.fit or {}
            text = f"{conv_type}: {model.source}"
            if "mae_cross_validated" in fit:
                text += (f" (calibrated on {fit.get('multi_session_journeys', '?')} journeys of 2+ sessions, "
                         f"cross-validated MAE {fit['mae_cross_validated']}, linear {fit.get('mae_linear', '?')}"
                         + (", POOR FIT" if fit.get("verdict") == "poor" else "") + ")")
            parts.append(text)
        return "; ".join(parts)
