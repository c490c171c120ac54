"""Errors that a retry cannot change, and how a task ends on one.

A bad param, a failed final check, an answer that breaks the API contract or a wrong setting
fails every attempt alike (:class:`PermanentError`): the task ends with :class:`PermanentFailure`,
one log line, no traceback and no retry. Everything else keeps the task's retries and traceback.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy


class PermanentError(Exception):
    """An error that the same attempt would raise again: fix the input or the setting, then re-run."""


class PermanentFailure(SystemExit):
    """How a task ends on a :class:`PermanentError`, after logging it in one line.

    Airflow's task runner logs any other exception with its traceback; a ``SystemExit`` it logs
    as ``Task exited exit_code=1`` and nothing more. ``str()`` is the message (the failure
    callback's ``ALERT`` line shows it); ``__cause__`` is the :class:`PermanentError`.
    """

    def __init__(self, message: str):
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NoRetryOnPermanentFailure(RetryPolicy):
    """The DAG's retry policy: a :class:`PermanentFailure` fails the task at once; other errors keep its retries."""

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int, context: Any = None) -> RetryDecision:
        if isinstance(exception, PermanentFailure):
            return RetryDecision.fail("permanent: a retry would fail the same way")
        return RetryDecision.default()
