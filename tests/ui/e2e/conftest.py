"""Counts the browser test's checks: every assert that passed and every expectation of a page.

``make e2e`` turns pytest's assertion pass hook on (``-o enable_assertion_pass_hook=true``); the
test's ``expect`` counts itself. The count is printed at the end of the run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

CHECKS: Counter[str] = Counter()


def pytest_configure(config) -> None:
    if config.getini("enable_assertion_pass_hook"):
        # A test module rewritten without the hook (``make test`` collects it too) is cached
        # without the hook's calls: rewrite it again.
        for cached in (Path(__file__).parent / "__pycache__").glob("*-pytest-*.pyc"):
            cached.unlink(missing_ok=True)


def pytest_assertion_pass(item, lineno, orig, expl) -> None:
    CHECKS["assert"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if CHECKS:
        terminalreporter.write_line(
            f"browser test: {sum(CHECKS.values())} checks passed ({CHECKS['assert']} assertions, "
            f"{CHECKS['expect']} expectations on the pages)")
