"""Errors that a retry cannot change, and how a task ends on one.

A bad param, a final check that fails, an answer that breaks the API contract or a setting
that is wrong gives the same result on every attempt: retrying only delays the failure and holds
the DAG's run slot. Such errors derive from :class:`PermanentError`. A task ends on one with
:class:`PermanentFailure`: one line in its log saying what is wrong, no traceback, and no retry
(:class:`NoRetryOnPermanentFailure`, the DAG's retry policy). Everything else (a database that is
busy, an API that kept answering 503) keeps the task's retries and Airflow's traceback.
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
