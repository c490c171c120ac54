"""Errors that a retry cannot change.

A bad param, a final check that fails, an answer that breaks the API contract or a setting
that is wrong gives the same result on every attempt: retrying only delays the failure and holds
the DAG's run slot. Such errors derive from :class:`PermanentError`; the tasks turn them into a
failure that Airflow does not retry. Everything else (a database that is busy, an API that kept
answering 503) keeps the task's retries.
"""

from __future__ import annotations


class PermanentError(Exception):
    """An error that the same attempt would raise again: fix the input or the setting, then re-run."""
