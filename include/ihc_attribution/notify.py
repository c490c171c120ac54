"""Telling people that a run failed or is late.

``RunFailureNotifier``, the DAG's ``on_failure_callback``, logs the failure and, when the connection
``$ATTRIBUTION_ALERT_CONN_ID`` exists, posts ``{"text": ...}`` to it (the shape Slack, Mattermost and
Teams webhooks accept); so does a missed deadline. ``$ATTRIBUTION_FAILURE_NOTIFIERS`` adds notifiers
of your own (SMTP, Slack ...) without editing the DAG (:class:`NotifierFactory`).
"""

from __future__ import annotations

import asyncio
import logging
import pkgutil
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseNotifier

from ihc_attribution import settings
from ihc_attribution.errors import PermanentFailure

log = logging.getLogger(__name__)


def post_alert(text: str, conn_id: str | None = None) -> bool:
    """Log ``text`` and post it to the alert connection if there is one; return whether it was posted.

    A failing webhook is logged, never raised, so that an alert cannot fail a task.
    """
    from airflow.sdk import BaseHook

    conn_id = conn_id or settings.get("alert_conn_id")
    log.warning("%s", text)
    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - the SDK raises different types for "not found"
        log.info("no connection %r: the alert was only logged", conn_id)
        return False
    from airflow.providers.http.hooks.http import HttpHook

    try:
        HttpHook(method="POST", http_conn_id=conn_id).run(json={"text": text}, extra_options={"timeout": 10})
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.error("could not post the alert to %r: %s", conn_id, type(exc).__name__)
        return False
    return True


def failure_message(context: dict[str, Any]) -> str:
    """One line naming the DAG, the run, the failed task and where its log is."""
    ti = context.get("ti") or context.get("task_instance")
    run_id = getattr(context.get("dag_run"), "run_id", None) or context.get("run_id")
    parts = [f"ihc_attribution run {run_id} failed"]
    if task_id := getattr(ti, "task_id", None):
        parts.append(f"in task {task_id}")
    reason = context.get("reason") or context.get("exception")
    # A PermanentFailure's message names its error (the task failure callback appends it).
    if reason and not isinstance(reason, PermanentFailure):
        parts.append(f"({type(reason).__name__ if isinstance(reason, BaseException) else reason})")
    if url := getattr(ti, "log_url", None):
        parts.append(f"log: {url}")
    return " ".join(parts)


def log_task_failure(context: dict[str, Any]) -> None:
    """Task failure callback: the alert and the error, in one line at the end of the task's own log.

    It runs in the task's process, so a UI user sees it in the log of the failed task even
    without an alert connection (the run's notifier writes to the dag-processor's log).
    """
    error = context.get("exception")
    first_line = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
    log.error("ALERT %s%s", failure_message(context), f": {first_line}" if first_line else "")


class RunFailureNotifier(BaseNotifier):
    """Posts one line per failed run to the alert connection (see the module docstring)."""

    template_fields = ()

    def __init__(self, conn_id: str | None = None):
        super().__init__()
        self.conn_id = conn_id

    def render_template_fields(self, context: dict[str, Any], jinja_env: Any = None) -> None:
        """Nothing is templated: the DAG in a callback's context may be a serialized one without a
        template environment, and rendering would fail the alert."""

    def notify(self, context: dict[str, Any]) -> None:
        post_alert(failure_message(context), self.conn_id)


async def deadline_missed(context: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Deadline callback: the run is still not finished when its deadline passed."""
    run_id = getattr((context or {}).get("dag_run"), "run_id", None)
    text = f"ihc_attribution run {run_id or '?'} has not finished {kwargs.get('hours', '?')} h after it was queued"
    await asyncio.to_thread(post_alert, text)


class NotifierFactory:
    """A failure callback that builds a fresh notifier for each failed run from a function of yours.

    ``path`` (``package.module:function`` or ``package.module.function``) names a function without
    arguments returning a notifier or any callable taking the context. It is imported when the DAG is
    parsed, so a wrong path is an import error of the DAG, shown in the UI, and called at each failure,
    since a notifier renders its templates in place. One that fails never hides the others.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self.factory = pkgutil.resolve_name(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"ATTRIBUTION_FAILURE_NOTIFIERS: cannot import {path!r} ({type(exc).__name__}: {exc})") from exc
        if not callable(self.factory):
            raise ValueError(f"ATTRIBUTION_FAILURE_NOTIFIERS: {path!r} is not a function")

    def __call__(self, context: dict[str, Any]) -> None:
        if not hasattr(context.get("dag"), "get_template_env"):
            # `dag.test()` (make run, make backfill) hands DAG callbacks a serialized DAG without a
            # template environment: the notifier then renders its templates in a plain sandboxed one.
            context = {key: value for key, value in context.items() if key != "dag"}
        try:
            self.factory()(context)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("the failure notifier of %s failed", self.path)

    def __repr__(self) -> str:
        return f"NotifierFactory({self.path!r})"


def failure_callbacks() -> list[Callable[[dict[str, Any]], None]]:
    """The DAG's failure callbacks: :class:`RunFailureNotifier`, then one per ``$ATTRIBUTION_FAILURE_NOTIFIERS`` path."""
    paths = [path.strip() for path in settings.get("failure_notifiers").split(",") if path.strip()]
    return [RunFailureNotifier(), *(NotifierFactory(path) for path in paths)]
