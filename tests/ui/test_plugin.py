"""The "Attribution report" UI plugin: registration, the page, the files it serves, and its auth."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from attribution_report import attribution_report_app as report_app
from attribution_report import attribution_report_sources as sources
from attribution_report.attribution_report_plugin import URL_PREFIX, LazyApp

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
RUN_ID = "manual__2024-01-05T10:00:00+00:00"
ISSUES = [
    ("c-1", "oversized_journey", "412 sessions > 200", RUN_ID, "2024-01-05 10:01:00"),
    ("c-2", "api_partial_failure", "<img src=x onerror=alert(1)> & more", RUN_ID, "2024-01-05 10:02:00"),
    ("c-3", "api_partial_failure", None, "scheduled__2024-01-04T00:00:00+00:00", "2024-01-04 00:05:00"),
]


def make_issue_db(path: Path, rows=ISSUES) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE attribution_issues (conv_id TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT, "
        "run_id TEXT NOT NULL, recorded_at TEXT NOT NULL, PRIMARY KEY (conv_id, reason))"
    )
    conn.executemany("INSERT INTO attribution_issues VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


def touch(path: Path, text: str, mtime: float) -> Path:
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def output(tmp_path, monkeypatch) -> Path:
    out = tmp_path / "output"
    out.mkdir()
    touch(out / "channel_reporting_2024-01-01_2024-01-07.csv", "channel_name,date\n", 1_700_000_000)
    touch(out / "channel_reporting_2024-01-01_2024-01-07.html", "<html>week</html>", 1_700_000_100)
    touch(out / "channel_reporting_2024-01-08_2024-01-08.csv", "channel_name,date\n", 1_700_000_500)
    touch(out / "notes.csv", "not a report", 1_700_000_900)
    touch(out / ".channel_reporting_2024-01-09_2024-01-09.csv.abc.tmp", "half written", 1_700_000_900)
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_DIR", str(out))
    return out


@pytest.fixture
def issue_db(tmp_path, monkeypatch) -> Path:
    db = make_issue_db(tmp_path / "attribution.db")
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    return db


@pytest.fixture
def client() -> TestClient:
    return TestClient(report_app.create_app(require_auth=False))


# --- registration ------------------------------------------------------------------------------


def test_plugin_loads_from_the_plugins_folder_alone_and_cheaply():
    """Airflow imports every file of plugins/ on its own, in every process: one plugin, no error,
    no FastAPI import, no database opened."""
    code = (
        "import sqlite3, sys\n"
        "def refuse(*a, **k): raise AssertionError('database opened at import')\n"
        "sqlite3.connect = refuse\n"
        f"sys.path.append({str(PLUGINS)!r})\n"
        "from airflow._shared.plugins_manager import _load_plugins_from_plugin_directory\n"
        f"plugins, errors = _load_plugins_from_plugin_directory(plugins_folder={str(PLUGINS)!r})\n"
        "p = plugins[0]\n"
        "print(json.dumps({'names': [x.name for x in plugins], 'errors': errors,\n"
        "  'fastapi': 'fastapi' in sys.modules, 'prefix': p.fastapi_apps[0]['url_prefix'],\n"
        "  'views': p.external_views}))\n"
    )
    env = dict(os.environ, AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env.pop("AIRFLOW_CONN_ATTRIBUTION_DB", None)
    result = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["names"] == ["attribution_report"]
    assert info["errors"] == {}
    assert info["fastapi"] is False
    assert info["prefix"] == URL_PREFIX == "/attribution-report"
    (view,) = info["views"]
    assert view["href"] == f"{URL_PREFIX}/" and view["url_route"] == "attribution-report"
    assert view["destination"] == "nav"


def test_lazy_app_is_built_once_on_the_first_request(monkeypatch, output, issue_db):
    built = []

    def factory():
        built.append(1)
        return report_app.create_app(require_auth=False)

    monkeypatch.setattr(report_app, "lazy_test_factory", factory, raising=False)
    app = LazyApp("attribution_report.attribution_report_app:lazy_test_factory")
    assert built == []
    with TestClient(app) as lazy_client:
        assert lazy_client.get("/").status_code == 200
        assert lazy_client.get("/").status_code == 200
    assert built == [1]


# --- the page ----------------------------------------------------------------------------------


def test_page_lists_reports_newest_first_with_their_files(client, output, issue_db):
    response = client.get("/")
    assert response.status_code == 200
    page = response.text
    week, day = page.index("2024-01-01 &rarr; 2024-01-07"), page.index("2024-01-08 &rarr; 2024-01-08")
    assert day < week  # written later, listed first
    assert 'href="files/channel_reporting_2024-01-01_2024-01-07.html">open chart</a>' in page
    assert 'href="files/channel_reporting_2024-01-01_2024-01-07.csv"' in page
    assert 'href="files/channel_reporting_2024-01-08_2024-01-08.csv"' in page
    assert "notes.csv" not in page and ".tmp" not in page
    assert str(output) in page


def test_page_shows_open_issues_linked_to_their_runs(client, output, issue_db):
    page = client.get("/").text
    assert "api_partial_failure: 2" in page and "oversized_journey: 1" in page and "3 in total" in page
    assert 'href="../dags/ihc_attribution/runs/manual__2024-01-05T10%3A00%3A00%2B00%3A00" data-airflow-page' in page
    assert "../dags/ihc_attribution/runs/scheduled__2024-01-04T00%3A00%3A00%2B00%3A00" in page
    # Newest first, and the detail is text, not markup.
    assert page.index(">c-2<") < page.index(">c-1<") < page.index(">c-3<")
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt; &amp; more" in page


def test_page_limits_the_issues_it_lists(client, output, tmp_path, monkeypatch):
    rows = [(f"c-{i:04d}", "api_partial_failure", "", RUN_ID, f"2024-01-05 10:{i // 60:02d}:{i % 60:02d}")
            for i in range(report_app.ISSUES_LIMIT + 25)]
    db = make_issue_db(tmp_path / "many.db", rows)
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    page = client.get("/").text
    assert f"Showing the latest {report_app.ISSUES_LIMIT} of {report_app.ISSUES_LIMIT + 25} issues." in page
    assert page.count("data-airflow-page>") == report_app.ISSUES_LIMIT


def test_page_without_issues_says_so(client, output, tmp_path, monkeypatch):
    db = make_issue_db(tmp_path / "clean.db", rows=[])
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    assert "No open issues." in client.get("/").text


def test_missing_database_is_a_message_and_is_not_created(client, output, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "attribution.db"
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(missing)}))
    response = client.get("/")
    assert response.status_code == 200
    assert "cannot be read" in response.text and "does not exist" in response.text
    assert not missing.exists() and not missing.parent.exists()


def test_database_without_the_issue_table_is_a_message(client, output, tmp_path, monkeypatch):
    db = tmp_path / "fresh.db"
    sqlite3.connect(db).close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    response = client.get("/")
    assert response.status_code == 200
    assert "No issue table yet" in response.text


def test_database_is_opened_read_only(client, output, issue_db, monkeypatch):
    opened = []
    real_connect = sqlite3.connect

    def spy(database, *args, **kwargs):
        opened.append((database, kwargs.get("uri")))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sources.sqlite3, "connect", spy)
    before = issue_db.read_bytes()
    assert "3 in total" in client.get("/").text
    assert opened and all(database.endswith("?mode=ro") and uri for database, uri in opened)
    assert issue_db.read_bytes() == before


def test_uri_form_of_the_connection_is_understood(client, output, issue_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", f"sqlite:///{issue_db}")
    assert "3 in total" in client.get("/").text


def test_malformed_connection_is_a_message(client, output, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", "{not json")
    response = client.get("/")
    assert response.status_code == 200 and "cannot be read" in response.text


def test_missing_output_folder_shows_no_reports(client, tmp_path, issue_db, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_DIR", str(tmp_path / "not-there"))
    response = client.get("/")
    assert response.status_code == 200 and "No report yet" in response.text


def test_relative_output_folder_is_taken_from_the_project_root(monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_DIR", "output")
    assert sources.output_dir() == (ROOT / "output").resolve()
    monkeypatch.delenv("ATTRIBUTION_OUTPUT_DIR")
    assert sources.output_dir() == (ROOT / "output").resolve()


def test_page_runs_only_its_own_script(client, output, issue_db):
    response = client.get("/")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split(
        "script-src")[1]
    assert response.text.count("<script>") == 1


# --- files -------------------------------------------------------------------------------------


def test_serves_report_files(client, output):
    chart = client.get("/files/channel_reporting_2024-01-01_2024-01-07.html")
    assert chart.status_code == 200 and chart.text == "<html>week</html>"
    assert chart.headers["content-type"].startswith("text/html")
    assert "script-src" not in chart.headers["content-security-policy"]  # charts run no script
    csv_file = client.get("/files/channel_reporting_2024-01-08_2024-01-08.csv")
    assert csv_file.status_code == 200 and csv_file.text.startswith("channel_name")
    assert "attachment" in csv_file.headers["content-disposition"]


@pytest.mark.parametrize(
    "name",
    [
        "notes.csv",
        "channel_reporting_2024-01-09_2024-01-09.csv",  # not there
        ".channel_reporting_2024-01-09_2024-01-09.csv.abc.tmp",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2Foutput%2Fchannel_reporting_2024-01-08_2024-01-08.csv",
        "channel_reporting_2024-01-08_2024-01-08.csv%00.html",
    ],
)
def test_serves_nothing_else(client, output, name):
    assert client.get(f"/files/{name}").status_code == 404


# --- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/files/channel_reporting_2024-01-08_2024-01-08.csv", "/icon.svg"])
def test_every_route_needs_an_airflow_login(output, path):
    anonymous = TestClient(report_app.create_app())
    assert anonymous.get(path).status_code == 401


def test_undefined_connection_is_a_message(client, output, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_ATTRIBUTION_DB", raising=False)
    monkeypatch.setenv("ATTRIBUTION_DB_CONN_ID", "attribution_db_not_defined_anywhere")
    response = client.get("/")
    assert response.status_code == 200
    assert "connection &#x27;attribution_db_not_defined_anywhere&#x27; is not defined" in response.text
