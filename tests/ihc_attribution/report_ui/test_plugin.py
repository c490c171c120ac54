"""The "Attribution report" UI plugin: registration, the extra link, the issues and exported files
pages, the files it serves, and its auth. The report page itself: test_report_view.py."""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from fastapi.testclient import TestClient

from ihc_attribution.daterange import RunRange, resolve_run_range
from ihc_attribution.report_ui import app as report_app
from ihc_attribution.report_ui import plugin as plugin
from ihc_attribution.report_ui import sources as sources
from ihc_attribution.report_ui import views as views
from ihc_attribution.report_ui.plugin import URL_PREFIX, LazyApp
from ihc_attribution.settings import local_output_dir

ROOT = Path(__file__).resolve().parents[3]
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
    touch(out / "channel_reporting_2024-01-08_2024-01-08.csv", "channel_name,date\nA,2024-01-08\n", 1_700_000_500)
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


def test_plugin_loads_from_the_installed_entry_point_alone_and_cheaply():
    """Airflow loads the installed distribution's ``airflow.plugins`` entry point in every process:
    one plugin, no error, no FastAPI import, no database opened; the plugins folder holds none."""
    code = (
        "import sqlite3, sys\n"
        "def refuse(*a, **k): raise AssertionError('database opened at import')\n"
        "sqlite3.connect = refuse\n"
        "from airflow._shared.plugins_manager import _load_entrypoint_plugins, _load_plugins_from_plugin_directory\n"
        "plugins, errors = _load_entrypoint_plugins()\n"
        f"folder, _ = _load_plugins_from_plugin_directory(plugins_folder={str(PLUGINS)!r})\n"
        "assert not folder, folder\n"
        "p = plugins[0]\n"
        "print(json.dumps({'names': [x.name for x in plugins], 'errors': errors,\n"
        "  'fastapi': 'fastapi' in sys.modules,\n"
        "  'prefix': p.fastapi_apps[0]['url_prefix'], 'views': p.external_views,\n"
        "  'links': [type(x).__name__ + ':' + x.name for x in p.global_operator_extra_links]}))\n"
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
    assert info["links"] == ["AttributionReportLink:Attribution report"]
    assert info["prefix"] == URL_PREFIX == "/attribution-report"
    (view,) = info["views"]
    assert view["href"] == f"{URL_PREFIX}/" and view["url_route"] == "attribution-report"
    assert view["destination"] == "nav"
    assert view["name"] == "Reports"  # short enough for the navigation bar's label


def test_lazy_app_is_built_once_on_the_first_request(monkeypatch, output, issue_db):
    built = []

    def factory():
        built.append(1)
        return report_app.create_app(require_auth=False)

    monkeypatch.setattr(report_app, "lazy_test_factory", factory, raising=False)
    app = LazyApp("ihc_attribution.report_ui.app:lazy_test_factory")
    assert built == []
    with TestClient(app) as lazy_client:
        assert lazy_client.get("/issues").status_code == 200
        assert lazy_client.get("/issues").status_code == 200
    assert built == [1]


# --- the extra link ----------------------------------------------------------------------------

BASE_URL = "https://airflow.example/base"
REPORT_PAGE = f"{BASE_URL}/plugin/attribution-report/attribution-report/"
SCHEDULED_RUN_ID = "scheduled__2024-01-04T00:00:00+00:00"
PACKAGE_SCHEMA = ROOT / "include" / "ihc_attribution" / "sql" / "package_schema.sql"


def package_table_ddl(table: str) -> str:
    """The package's own DDL of a table, so that the link reads the columns the pipeline writes."""
    match = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \(.*?\);", PACKAGE_SCHEMA.read_text(), re.S)
    assert match, table
    return match.group(0)


def record_run(db: Path, table: str, run_id: str, run_range: RunRange) -> None:
    """Record a run's range as the pipeline does (``extract_journeys``, ``check_run``)."""
    conn = sqlite3.connect(db)
    conn.execute(package_table_ddl(table))
    if table == "attribution_runs":
        conn.execute("INSERT INTO attribution_runs VALUES (?, ?, ?, ?)",
                     (run_id, run_range.start_ts, run_range.end_ts, "2024-01-05 10:00:00"))
    else:
        conn.execute(f"INSERT INTO {table} VALUES (?, ?, ?, 0, 0, 0, NULL)",
                     (run_id, run_range.start_ts, run_range.end_ts))
    conn.commit()
    conn.close()


def key(run_id: str = RUN_ID, dag_id: str = "ihc_attribution", task_id: str = "export_csv") -> TaskInstanceKey:
    """What Airflow's API server passes to a link: the task instance's key."""
    return TaskInstanceKey(dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=1, map_index=-1)


@pytest.fixture
def runs_db(tmp_path, monkeypatch) -> Path:
    """The attribution database of the link, with a scheduled and a manual run recorded."""
    db = tmp_path / "attribution.db"
    # A scheduled run: no dates given, its data interval (one day); a manual run: its params.
    scheduled = resolve_run_range({"start_date": None, "end_date": None},
                                  dt.datetime(2024, 1, 4, tzinfo=dt.timezone.utc),
                                  dt.datetime(2024, 1, 5, tzinfo=dt.timezone.utc))
    manual = resolve_run_range({"start_date": "2024-01-01", "end_date": "2024-01-14"})
    record_run(db, "attribution_runs", SCHEDULED_RUN_ID, scheduled)
    record_run(db, "attribution_runs", RUN_ID, manual)
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv("ATTRIBUTION_UI_BASE_URL", BASE_URL + "/")
    return db


@pytest.fixture(scope="module")
def export_task():
    """``export_csv`` as the API server holds it: the DAG file's task, serialized and read back."""
    from airflow.serialization.serialized_objects import DagSerialization

    spec = importlib.util.spec_from_file_location("ihc_attribution_dag_for_links",
                                                  ROOT / "dags" / "ihc_attribution_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = DagSerialization.from_dict(DagSerialization.to_dict(module.ihc_attribution()))
    return dag.get_task("export_csv")


class TaskInstance:
    def __init__(self, ti_key: TaskInstanceKey) -> None:
        self.key = ti_key


def test_extra_link_opens_the_report_of_the_runs_range(runs_db, export_task):
    """Asked the way the API server asks (the extra links endpoint), outside any task process:
    a scheduled run's link covers its data interval, a manual run's the dates of its params."""
    assert "Attribution report" in export_task.extra_links
    assert export_task.get_extra_links(TaskInstance(key(SCHEDULED_RUN_ID)), "Attribution report") == (
        f"{REPORT_PAGE}?start=2024-01-04&end=2024-01-04")
    assert export_task.get_extra_links(TaskInstance(key(RUN_ID)), "Attribution report") == (
        f"{REPORT_PAGE}?start=2024-01-01&end=2024-01-14")


def test_extra_link_is_only_on_export_csv_of_a_run_that_recorded_its_range(runs_db, monkeypatch):
    link = plugin.AttributionReportLink()
    assert link.get_link(None, ti_key=key()) == f"{REPORT_PAGE}?start=2024-01-01&end=2024-01-14"
    assert link.get_link(None, ti_key=key("manual__2024-02-01T08:00:00+00:00")) == ""  # not started yet
    opened = []
    monkeypatch.setattr(plugin.sources, "open_db", lambda *a, **k: opened.append(1))
    assert link.get_link(None, ti_key=key(task_id="check_run")) == ""
    assert link.get_link(None, ti_key=key(dag_id="other_dag")) == ""
    assert opened == []  # the task page of any other task costs no database


def test_extra_link_of_a_run_whose_staging_was_purged_comes_from_its_final_check(runs_db):
    purged = "manual__2023-11-02T09:30:00+00:00"
    record_run(runs_db, "attribution_run_results", purged,
               resolve_run_range({"start_date": "2023-10-01", "end_date": "2023-10-31"}))
    assert plugin.AttributionReportLink().get_link(None, ti_key=key(purged)) == (
        f"{REPORT_PAGE}?start=2023-10-01&end=2023-10-31")


def test_extra_link_never_breaks_the_task_page(runs_db, tmp_path, monkeypatch, caplog):
    link = plugin.AttributionReportLink()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite",
                                                                  "host": str(tmp_path / "gone.db")}))
    assert link.get_link(None, ti_key=key()) == ""
    assert "gone.db does not exist" in caplog.text
    fresh = tmp_path / "fresh.db"
    sqlite3.connect(fresh).close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(fresh)}))
    assert link.get_link(None, ti_key=key()) == ""  # no run recorded in this database yet

    def boom(*args, **kwargs):
        raise RuntimeError("database away")

    monkeypatch.setattr(plugin.sources, "open_db", boom)
    assert link.get_link(None, ti_key=key()) == ""
    assert "RuntimeError: database away" in caplog.text


def test_plugin_uses_only_public_airflow_interfaces():
    """The plugin runs inside Airflow's components: it imports Airflow's documented public
    modules only, never a private name or the metadata database's models."""
    tree = ast.parse((ROOT / "include" / "ihc_attribution" / "report_ui" / "plugin.py").read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "airflow":
            imported += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            imported += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "airflow"]
    assert sorted(imported) == [("airflow.plugins_manager", "AirflowPlugin"), ("airflow.sdk", "BaseOperatorLink")]


# --- exported files ----------------------------------------------------------------------------


def test_exports_are_listed_by_range_with_their_files(client, output, issue_db):
    response = client.get("/exports")
    assert response.status_code == 200
    page = response.text
    week, day = page.index("2024-01-01 &rarr; 2024-01-07"), page.index("2024-01-08 &rarr; 2024-01-08")
    assert day < week  # the later range first
    assert 'href="files/channel_reporting_2024-01-01_2024-01-07.html">open chart</a>' in page
    assert 'href="files/channel_reporting_2024-01-01_2024-01-07.csv"' in page
    assert 'href="./?start=2024-01-01&amp;end=2024-01-07">open</a>' in page
    assert "notes.csv" not in page and ".tmp" not in page
    assert str(output) in page


def test_empty_single_day_exports_are_hidden_unless_asked_for(client, output, issue_db):
    touch(output / "channel_reporting_2024-02-01_2024-02-01.csv", "channel_name,date\n", 1_700_001_000)
    touch(output / "channel_reporting_2024-02-02_2024-02-02.csv", "channel_name,date\nA,2024-02-02\n",
          1_700_001_000)
    page = client.get("/exports").text
    assert "2024-02-01 &rarr;" not in page and "2024-02-02 &rarr;" in page
    assert "1 empty export(s) of single days hidden" in page
    assert "2024-02-01 &rarr;" in client.get("/exports", params={"all": 1}).text


# --- issues ------------------------------------------------------------------------------------


def test_issues_are_counted_by_reason_and_linked_to_their_runs(client, output, issue_db):
    page = client.get("/issues").text
    assert "api_partial_failure: 2" in page and "oversized_journey: 1" in page and "3 in total" in page
    assert 'href="../dags/ihc_attribution/runs/manual__2024-01-05T10%3A00%3A00%2B00%3A00" data-airflow-page' in page
    assert "../dags/ihc_attribution/runs/scheduled__2024-01-04T00%3A00%3A00%2B00%3A00" in page
    # Newest first, and the detail is text, not markup.
    assert page.index(">c-2<") < page.index(">c-1<") < page.index(">c-3<")
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt; &amp; more" in page


def test_issues_page_limits_what_it_lists(client, output, tmp_path, monkeypatch):
    rows = [(f"c-{i:04d}", "api_partial_failure", "", RUN_ID, f"2024-01-05 10:{i // 60:02d}:{i % 60:02d}")
            for i in range(views.ISSUES_LIMIT + 25)]
    db = make_issue_db(tmp_path / "many.db", rows)
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    page = client.get("/issues").text
    assert f"Showing the latest {views.ISSUES_LIMIT} of {views.ISSUES_LIMIT + 25} issues." in page
    assert page.count("data-airflow-page>") == views.ISSUES_LIMIT


def test_no_issues_says_so(client, output, tmp_path, monkeypatch):
    db = make_issue_db(tmp_path / "clean.db", rows=[])
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    assert "No open issues." in client.get("/issues").text


def test_database_without_the_issue_table_is_a_message(client, output, tmp_path, monkeypatch):
    db = tmp_path / "fresh.db"
    sqlite3.connect(db).close()
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    response = client.get("/issues")
    assert response.status_code == 200
    assert "No issue table yet" in response.text


def test_uri_form_of_the_connection_is_understood(client, output, issue_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", f"sqlite:///{issue_db}")
    assert "3 in total" in client.get("/issues").text


def test_malformed_connection_is_a_message(client, output, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", "{not json")
    for path in ("/", "/issues"):
        response = client.get(path)
        assert response.status_code == 200 and "cannot be read" in response.text


def test_missing_output_folder_shows_no_reports(client, tmp_path, issue_db, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_DIR", str(tmp_path / "not-there"))
    response = client.get("/exports")
    assert response.status_code == 200 and "No report yet" in response.text


def test_relative_output_folder_is_taken_from_the_project_root(monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_DIR", "output")
    assert local_output_dir() == (ROOT / "output").resolve()
    monkeypatch.delenv("ATTRIBUTION_OUTPUT_DIR")
    assert local_output_dir() == (ROOT / "output").resolve()


@pytest.mark.parametrize("path", ["/", "/issues", "/exports"])
def test_pages_run_only_the_plugins_own_scripts(client, output, issue_db, path):
    response = client.get(path)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    # every script is a file of the plugin: no inline code (a JSON data block is not code)
    for tag in response.text.split("<script")[1:]:
        assert ' src="/static/' in tag.split(">")[0] or 'type="application/json"' in tag.split(">")[0]


def test_static_files_are_served_and_nothing_else(client):
    script = client.get("/static/report.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/report.css").headers["content-type"].startswith("text/css")
    for name in ("..%2Fapp.py", "missing.js", ".hidden.js", "report.html.j2", "chart.umd.min.js"):
        assert client.get(f"/static/{name}").status_code == 404


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


@pytest.mark.parametrize("path", ["/", "/issues", "/exports", "/report.csv", "/static/report.js",
                                  "/files/channel_reporting_2024-01-08_2024-01-08.csv", "/static/icon.svg"])
def test_every_route_needs_an_airflow_login(output, path):
    anonymous = TestClient(report_app.create_app())
    assert anonymous.get(path).status_code == 401


def test_undefined_connection_is_a_message(client, output, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_ATTRIBUTION_DB", raising=False)
    monkeypatch.setenv("ATTRIBUTION_DB_CONN_ID", "attribution_db_not_defined_anywhere")
    response = client.get("/issues")
    assert response.status_code == 200
    assert "connection &#39;attribution_db_not_defined_anywhere&#39; is not defined" in response.text
