"""The "Attribution report" page: a small FastAPI app mounted in the Airflow API server.

``GET /`` lists the exported reports (newest first, with links to each chart and CSV) and the
open ``attribution_issues``, each linked to the DAG run that recorded it. ``GET /files/<name>``
serves an exported report file, and nothing else. Every route requires a logged-in Airflow user
allowed to read the runs of ``ihc_attribution``: Airflow does not authenticate plugin apps itself.

Airflow imports every module under ``plugins/`` in every component, task processes included, so
the top level of this module imports only the standard library; FastAPI is imported when the app
is built, on the page's first request.
"""

import base64
import hashlib
import html
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from attribution_report import attribution_report_sources as sources

DAG_ID = "ihc_attribution"
ISSUES_LIMIT = 200
REPORTS_LIMIT = 100

# The UI shows the page in an iframe. A plain link to a run would open the whole UI inside that
# frame, and the frame's sandbox forbids navigating the top window; so links marked
# data-airflow-page hand their target to the UI's router instead (same origin). Without script
# they still work, inside the frame.
_NAV_SCRIPT = """
document.addEventListener("click", function (event) {
  var link = event.target.closest && event.target.closest("a[data-airflow-page]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  try {
    var top = window.parent;
    if (top === window) return;
    var url = new URL(link.href);
    if (url.origin !== top.location.origin) return;
    var idx = (top.history.state && typeof top.history.state.idx === "number") ? top.history.state.idx + 1 : 0;
    top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: idx}, "",
                          url.pathname + url.search + url.hash);
    top.dispatchEvent(new PopStateEvent("popstate", {state: top.history.state}));
    event.preventDefault();
  } catch (error) { /* the plain link still works */ }
});
"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_NAV_SCRIPT.encode()).digest()).decode()
# The page runs only that script and loads nothing from elsewhere; the charts run no script at all.
_PAGE_CSP = (
    f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
    "frame-ancestors 'self'"
)
_CHART_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
_PAGE_HEADERS = {"Content-Security-Policy": _PAGE_CSP, "X-Content-Type-Options": "nosniff",
                 "Cache-Control": "no-store"}
_CHART_HEADERS = {"Content-Security-Policy": _CHART_CSP, "X-Content-Type-Options": "nosniff"}
# Navigation icon: three bars, in the UI's icon size.
_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#808ea3" '
    'stroke-width="2" stroke-linecap="round"><path d="M4 20h16"/><path d="M7 16v-5"/><path d="M12 16V6"/>'
    '<path d="M17 16v-8"/></svg>'
)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def run_link(run_id: str) -> str:
    """Link to the run's page in the Airflow UI, relative to this page (works under a base path)."""
    return f"../dags/{quote(DAG_ID, safe='')}/runs/{quote(run_id, safe='')}"


def file_link(name: str) -> str:
    return f"files/{quote(name, safe='')}"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:20px;color:#1d2433;background:#fff}
h1{font-size:21px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 6px}
.sub,.muted{color:#5c6578}.sub{margin:0 0 8px;font-size:14px}
table{border-collapse:collapse;font-size:14px;margin-top:6px}
th,td{padding:6px 12px;border-bottom:1px solid #e6e9ef;text-align:left;vertical-align:top}
thead th{background:#f4f6f9}td.num{text-align:right}
td.detail{max-width:420px;overflow-wrap:anywhere}
a{color:#0b63c5}.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:13px;
background:#fdecea;color:#a2271c;margin:2px 6px 2px 0}.ok{color:#1e7d32}
.warn{color:#a2271c}code{background:#f4f6f9;padding:1px 4px;border-radius:4px}
"""


def _reports_section(folder: Path, reports: "list[sources.Report]") -> str:
    parts = [
        "<h2>Reports</h2>",
        f'<p class="sub">Exported by the <code>export_csv</code> task to <code>{_esc(folder)}</code>, '
        "most recently written first.</p>",
    ]
    if not reports:
        return "".join(parts) + '<p class="muted">No report yet. Trigger a run of '\
            f'<code>{DAG_ID}</code>; its CSV (and chart) appear here.</p>'
    shown = reports[:REPORTS_LIMIT]
    parts.append("<table><thead><tr><th>Range</th><th>Days</th><th>Chart</th><th>CSV</th>"
                 "<th>Written (UTC)</th></tr></thead><tbody>")
    for report in shown:
        chart = (f'<a href="{file_link(report.chart.name)}">open chart</a>' if report.chart
                 else '<span class="muted">none</span>')
        csv = (f'<a href="{file_link(report.csv.name)}">{_esc(report.csv.name)}</a>' if report.csv
               else '<span class="muted">none</span>')
        parts.append(
            f"<tr><td>{_esc(report.start)} &rarr; {_esc(report.end)}</td>"
            f'<td class="num">{report.days}</td><td>{chart}</td><td>{csv}</td>'
            f"<td>{report.modified:%Y-%m-%d %H:%M}</td></tr>"
        )
    parts.append("</tbody></table>")
    if len(reports) > len(shown):
        parts.append(f'<p class="muted">Showing the latest {len(shown)} of {len(reports)} reports.</p>')
    return "".join(parts)


def _issues_section(view: "sources.IssuesView") -> str:
    parts = ["<h2>Open issues</h2>"]
    source = f" in <code>{_esc(view.source)}</code>" if view.source else ""
    if view.error:
        return "".join(parts) + f'<p class="warn">The attribution database cannot be read{source}: '\
            f"{_esc(view.error)}</p>"
    if view.table_missing:
        return "".join(parts) + f'<p class="muted">No issue table yet{source}: the pipeline has not run '\
            "on this database.</p>"
    parts.append(
        f'<p class="sub">Conversions of the latest run over each date that could not be fully attributed'
        f"{source}. A later run over the same dates replaces them.</p>"
    )
    if view.total == 0:
        return "".join(parts) + '<p class="ok">No open issues.</p>'
    parts.append("<p>" + "".join(
        f'<span class="badge">{_esc(reason)}: {count}</span>' for reason, count in view.by_reason
    ) + f" <span class=\"muted\">{view.total} in total</span></p>")
    parts.append("<table><thead><tr><th>Conversion</th><th>Reason</th><th>Detail</th><th>Run</th>"
                 "<th>Recorded (UTC)</th></tr></thead><tbody>")
    for issue in view.latest:
        parts.append(
            f"<tr><td>{_esc(issue.conv_id)}</td><td>{_esc(issue.reason)}</td>"
            f'<td class="detail">{_esc(issue.detail)}</td>'
            f'<td><a href="{_esc(run_link(issue.run_id))}" data-airflow-page>{_esc(issue.run_id)}</a></td>'
            f"<td>{_esc(issue.recorded_at)}</td></tr>"
        )
    parts.append("</tbody></table>")
    if view.total > len(view.latest):
        parts.append(f'<p class="muted">Showing the latest {len(view.latest)} of {view.total} issues.</p>')
    return "".join(parts)


def render_page(folder: Path, reports: "list[sources.Report]", issues: "sources.IssuesView") -> str:
    """The whole page."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Attribution report</title><style>{_CSS}</style></head><body>"
        "<h1>Attribution report</h1>"
        f'<p class="sub">Channel reports and open attribution issues of the <code>{DAG_ID}</code> DAG.</p>'
        + _reports_section(folder, reports)
        + _issues_section(issues)
        + f"<script>{_NAV_SCRIPT}</script></body></html>"
    )


def _airflow_authorization() -> Callable[..., Any]:
    """Airflow's own check: a valid UI or API token of a user who may read the DAG's runs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)


def create_app(*, require_auth: bool = True) -> Any:
    """The page's FastAPI app. ``require_auth=False`` is for tests that run it outside the API server."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, Response

    from attribution_report import attribution_report_sources as sources

    dependencies = [Depends(_airflow_authorization())] if require_auth else []
    app = FastAPI(
        title="Attribution report",
        description="Exported channel reports and open attribution issues of the ihc_attribution DAG.",
        dependencies=dependencies,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/", response_class=HTMLResponse)
    def page():
        folder = sources.output_dir()
        body = render_page(folder, sources.list_reports(folder), sources.read_issues(ISSUES_LIMIT))
        return HTMLResponse(body, headers=_PAGE_HEADERS)

    @app.get("/icon.svg", response_class=Response)
    def icon():
        return Response(_ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/files/{name}", response_class=FileResponse)
    def report_file(name: str):
        path = sources.report_file(sources.output_dir(), name)
        if path is None:
            raise HTTPException(status_code=404, detail="No such report file")
        if path.suffix == ".html":
            return FileResponse(path, media_type="text/html; charset=utf-8", headers=_CHART_HEADERS)
        return FileResponse(path, media_type="text/csv; charset=utf-8", filename=path.name,
                            headers={"X-Content-Type-Options": "nosniff"})

    return app
