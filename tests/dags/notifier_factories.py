"""Notifier factories for the tests of ``ATTRIBUTION_FAILURE_NOTIFIERS``: what a user's module holds."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier

#: Every context the recording notifier was called with.
CALLS: list[dict[str, Any]] = []


class RecordingNotifier(BaseNotifier):
    template_fields = ("message",)

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def notify(self, context: dict[str, Any]) -> None:
        CALLS.append({"run_id": context.get("run_id"), "reason": context.get("reason"), "message": self.message})


def recording() -> RecordingNotifier:
    return RecordingNotifier("run {{ run_id }} failed")


def email() -> BaseNotifier:
    """The e-mail example of docs/operations.md: the SMTP provider's notifier on the connection ``smtp_alerts``."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        smtp_conn_id="smtp_alerts",
        from_email="airflow@example.com",
        to="data-team@example.com",
        subject="ihc_attribution run {{ run_id }} failed",
        html_content="Run {{ run_id }} failed in task {{ ti.task_id }} ({{ reason }}).",
    )


def broken() -> BaseNotifier:
    raise RuntimeError("no notifier today")
