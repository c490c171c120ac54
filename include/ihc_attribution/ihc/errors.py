"""Errors of the IHC API: permanent ones (a ``PermanentError``: retrying cannot help) and exhausted retries.

Messages never contain the API key in any form: they are built from status codes, ids and
redacted excerpts of answers, never from headers or ``requests`` objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ihc_attribution.errors import PermanentError

if TYPE_CHECKING:
    from ihc_attribution.ihc.client import SendSummary


class IhcError(Exception):
    """An error of the IHC API stage, with the HTTP status (or body ``statusCode``) when known."""

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class IhcConfigurationError(IhcError, PermanentError):
    """Settings, key, conv type or limits are wrong, or the service refused the request for it."""


class IhcContractError(IhcError, PermanentError):
    """An answer broke the API contract (shape, completeness, credit range, sums, size cap)."""


class IhcRejectedJourneysError(IhcError, PermanentError):
    """The service rejected at least ``max_rejected_share`` of the journeys sent."""


class IhcRetriesExhaustedError(IhcError):
    """Requests sent stayed unanswered after all retries, or after a cancel; answered ones were delivered.
    ``last_errors``: request id -> last transient problem seen for it."""

    def __init__(self, message: str, *, request_ids: Sequence[Any], last_errors: Mapping[Any, str],
                 summary: SendSummary | None = None):
        super().__init__(message)
        self.request_ids = list(request_ids)
        self.last_errors = dict(last_errors)
        self.summary = summary
