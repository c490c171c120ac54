"""Settings of an IHC connection, validated once, and the handling of its API key.

The settings are the connection's extras (plus ``base_url``), transport ones named as in ``HttpHook``;
values may be strings, as the URI form of connections delivers them, and blank values mean "not set".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote, quote_plus, urlparse

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ihc_attribution.ihc.errors import IhcConfigurationError

ENDPOINT = "/v1/compute_ihc"
_MAX_EXCERPT = 300

PositiveInt = Annotated[int, Field(ge=1)]


class IhcSettings(BaseModel):
    """Settings of an IHC connection: everything but the API key, so it is safe to log.

    ``base_url`` is the service's scheme, host and port (a trailing ``/v1/compute_ihc`` is accepted);
    the other fields are the connection's extras, described in docs/ihc_hook.md.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_url: str
    conv_type_id: Annotated[str, Field(min_length=1)]
    max_journeys_per_request: PositiveInt = 100
    max_sessions_per_request: PositiveInt = 3000
    max_concurrency: PositiveInt = 4
    timeout: Annotated[float, Field(gt=0)] = 30.0
    max_retries: Annotated[int, Field(ge=0)] = 5
    backoff_base: Annotated[float, Field(ge=0)] = 1.0
    backoff_max: Annotated[float, Field(ge=0)] = 60.0
    max_response_bytes: PositiveInt | None = None  # None: 1 MiB + 4 x the request body
    max_rejected_share: Annotated[float, Field(gt=0, le=1)] = 1.0
    redistribution_parameter: dict[Literal["initializer", "holder", "closer"], dict[str, Any]] | None = None
    oversized_journey_policy: Literal["truncate", "skip"] = "truncate"
    verify: bool | str = Field(True, validation_alias=AliasChoices("verify", "verify_ssl"))
    cert: str | tuple[str, str] | None = None
    proxies: dict[str, str] | None = Field(None, repr=False)  # out of repr: a proxy URL may hold credentials
    trust_env: bool = True

    @model_validator(mode="before")
    @classmethod
    def _unset_blanks(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v.strip() if isinstance(v, str) else v for k, v in data.items()
                    if v is not None and not (isinstance(v, str) and not v.strip())}
        return data

    @field_validator("max_journeys_per_request", "max_sessions_per_request", "max_concurrency",
                     "max_retries", "max_response_bytes", "timeout", "backoff_base", "backoff_max",
                     "max_rejected_share", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        return value

    @field_validator("redistribution_parameter", "proxies", "cert", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        # The URI form of a connection delivers objects and lists as JSON text.
        if isinstance(value, str) and value.startswith(("{", "[")):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("is not valid JSON") from None
        return value

    @field_validator("oversized_journey_policy", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL with a host")
        return value.rstrip("/")

    @field_validator("verify", mode="before")
    @classmethod
    def _true_false_or_path(cls, value: Any) -> Any:
        # Text from the URI form of a connection: "false" is a switch, anything else a path.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value

    @field_validator("verify", "cert")
    @classmethod
    def _files_exist(cls, value: Any) -> Any:
        # Checked here: requests would raise a bare OSError at the first request instead.
        paths = [value] if isinstance(value, str) else list(value) if isinstance(value, tuple) else []
        missing = [path for path in paths if not os.path.exists(path)]
        if missing:
            raise ValueError(f"no such file or directory: {', '.join(missing)}")
        return value

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        return self.base_url if self.base_url.endswith(ENDPOINT) else self.base_url + ENDPOINT


#: Extras understood in an IHC connection.
KNOWN_EXTRAS = tuple(name for name in IhcSettings.model_fields if name != "base_url")


def parse_settings(values: Mapping[str, Any], where: str = "the IHC connection") -> IhcSettings:
    """Validate ``base_url`` and the connection's extras once; IhcConfigurationError naming every bad, missing or
    unknown extra and ``where`` they are (e.g. ``connection 'ihc_api'``)."""
    try:
        return IhcSettings.model_validate(dict(values))
    except ValidationError as exc:
        raise IhcConfigurationError(f"{where}: " + "; ".join(_problem(error) for error in exc.errors())) from None


def _problem(error: Any) -> str:
    name = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden" and name == "verify_ssl":
        return "extras verify and verify_ssl are one setting: give one of them"
    if error["type"] == "extra_forbidden":
        return f"unknown extra {name} (known extras: {', '.join(KNOWN_EXTRAS)})"
    if error["type"] == "missing":
        return f"extra {name} is required and must not be empty"
    if name.startswith("proxies"):  # a proxy URL may hold credentials: never shown
        return f"extra {name}: {error['msg']}"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    return f"extra {name}: {error['msg']}, got {shown}"


def clean_api_key(raw: str | None, where: str = "the IHC connection") -> str:
    """The key without surrounding whitespace; IhcConfigurationError (never showing it) if empty or with inner blanks."""
    key = (raw or "").strip()
    if not key:
        raise IhcConfigurationError(f"{where} has no API key; set the IHC API key as its password")
    if any(char.isspace() or not char.isprintable() for char in key):
        raise IhcConfigurationError(
            f"the API key of {where} contains whitespace or control characters inside it; "
            "paste the key again as the connection's password"
        )
    return key


class Redactor:
    """Masks every form of a secret in a text: as given, stripped, escaped and URL-encoded."""

    def __init__(self, secret: str) -> None:
        forms = {secret, secret.strip(), repr(secret)[1:-1], json.dumps(secret)[1:-1],
                 quote(secret, safe=""), quote_plus(secret)}
        forms |= {form.strip() for form in forms}
        self._forms = sorted((form for form in forms if form), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "***")
        return text

    def excerpt(self, text: str) -> str:
        """The text redacted and cut to a length fit for a message."""
        text = self(text.strip())
        return text if len(text) <= _MAX_EXCERPT else text[:_MAX_EXCERPT] + "..."
