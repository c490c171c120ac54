"""The local Airflow, a logged-in Chromium page and one run over the demo range, shared by the
browser test's modules; and the count of its checks.

``make e2e`` turns pytest's assertion pass hook on (``-o enable_assertion_pass_hook=true``, after
removing the modules' cached rewrites, which ``make test`` leaves without the hook's calls); the
pages' ``expect`` counts itself. The count is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

pytest.register_assert_rewrite("tests.ui.e2e.pages")

from tests.ui.e2e import pages as ui  # noqa: E402  (after the rewrite hook, so its asserts count)
from tests.ui.e2e.pages import BASE, CHECKS, DAG_ID, END, ROOT, RUN_TIMEOUT_S, START, VIEWPORT, expect  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def pytest_assertion_pass(item, lineno, orig, expl) -> None:
    CHECKS["assert"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if CHECKS:
        terminalreporter.write_line(
            f"browser test: {sum(CHECKS.values())} checks passed ({CHECKS['assert']} assertions, "
            f"{CHECKS['expect']} expectations on the pages)")


def _stack_command(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # The test session points AIRFLOW_HOME at a throw-away folder and turns task retries off;
    # the local Airflow keeps the project's own settings.
    env = {k: v for k, v in os.environ.items() if k not in ("AIRFLOW_HOME", "ATTRIBUTION_TASK_RETRIES")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "airflow_up.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def admin_password():
    """The local Airflow's admin password; starts the stack if needed and stops it afterwards."""
    up = ui.airflow_up()
    was_running = bool(up.running(up.load_state()))
    result = _stack_command("up", timeout=900)
    assert result.returncode == 0, f"make up failed:\n{result.stderr[-4000:]}"
    try:
        yield up.load_secrets()["admin_password"]
    finally:
        if not was_running:
            down = _stack_command("down", timeout=300)
            assert down.returncode == 0, down.stderr[-2000:]


@pytest.fixture(scope="session")
def page(admin_password, tmp_path_factory):
    """A logged-in page of a fresh headless Chromium profile (Debian's chromium, not Playwright's download)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed (make e2e installs Debian's chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT, timeout=60_000,
        )
        context.set_default_timeout(30_000)
        context.set_default_navigation_timeout(60_000)
        try:
            tab = context.new_page()
            tab.goto(f"{BASE}/")
            expect(tab.get_by_role("button", name="Sign in")).to_be_visible()
            tab.get_by_label("Username").fill("admin")
            tab.get_by_label("Password").fill(admin_password)
            tab.get_by_role("button", name="Sign in").click()
            tab.wait_for_url(f"{BASE}/")
            assert any(c["name"] == "_token" for c in context.cookies()), "no session cookie after login"
            yield tab
        finally:
            context.close()


@pytest.fixture(scope="session")
def run_id(page) -> str:
    """A run over the demo range, triggered from the DAG's trigger form; it succeeded."""
    # The DAG's trigger form, with the range as run parameters.
    page.goto(f"{BASE}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    # The form names each param's input element_<param> (its label is not tied to the input).
    dialog.locator('input[name="element_start_date"]').fill(START)
    dialog.locator('input[name="element_end_date"]').fill(END)
    dialog.locator('input[name="element_end_date"]').blur()
    ui.shot(page, "ui-trigger-form.png")
    with page.expect_response(
        lambda r: r.request.method == "POST" and f"/dags/{DAG_ID}/dagRuns" in r.url, timeout=30_000
    ) as triggered:
        dialog.get_by_role("button", name="Trigger").click()
    assert triggered.value.ok, f"trigger: HTTP {triggered.value.status} {triggered.value.text()[:500]}"
    run = triggered.value.json()
    run_id = run["dag_run_id"]
    assert (run["conf"].get("start_date"), run["conf"].get("end_date")) == (START, END)

    # The run succeeds (the API is polled with the browser's own session).
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = ui.run_state(page, run_id)["state"]
    while state not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {state} after {RUN_TIMEOUT_S:.0f} s"
        time.sleep(3)
        state = ui.run_state(page, run_id)["state"]
    assert state == "success", f"run {run_id} ended {state}; see its task logs in the UI"

    # The DAG's list of runs shows it; its own page shows it succeeded, task by task.
    page.goto(f"{BASE}/dags/{DAG_ID}/runs")
    expect(page.get_by_text(run_id).first).to_be_visible()
    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    expect(page.get_by_role("heading", name=run_id).or_(page.get_by_text(run_id).first).first).to_be_visible()
    expect(page.get_by_text("export_csv").first).to_be_visible()
    expect(page.get_by_text("Success").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    ui.shot(page, "ui-run-success.png")
    return run_id
