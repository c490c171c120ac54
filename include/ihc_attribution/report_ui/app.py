"""The "Attribution report" pages (``/``, ``/report.csv``, ``/issues``, ``/exports``): a small FastAPI app
mounted in the Airflow API server, built by the plugin on its first request. Every route needs an Airflow
user allowed to read the runs of ``ihc_attribution``: Airflow does not authenticate plugin apps itself.
"""

import contextlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from ihc_attribution.charts import template_env
from ihc_attribution.report_ui import sources, views
from ihc_attribution.settings import DAG_ID, local_output_dir

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The pages' script and stylesheet, and the icon of their entry in the UI's navigation.
STATIC_FILES = {"report.js": "text/javascript; charset=utf-8", "report.css": "text/css; charset=utf-8",
                "icon.svg": "image/svg+xml"}
EXPORT_ROWS_SCAN_LIMIT = 200

# The pages run only their own script (served below) and load nothing from elsewhere; the
# charts are inline SVG, with a colour swatch or two in style attributes.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_CHART_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'",
                  "X-Content-Type-Options": "nosniff"}

router = APIRouter()


def _render(name: str, request: Request, **context: Any) -> HTMLResponse:
    # Links start at the app's root: the prefix it is mounted at (behind any base path).
    root = str(request.scope.get("root_path") or "").rstrip("/") + "/"
    page = template_env().get_template(name).render(
        root=root, run_link=views.run_link, dag_id=DAG_ID, **context)
    return HTMLResponse(page, headers=_PAGE_HEADERS)


def _message(request: Request, text: str) -> HTMLResponse:
    return _render("message.html.j2", request, title="Attribution report", page="Report", message=text)


@router.get("/", response_class=HTMLResponse)
def report_page(request: Request):
    try:
        db = sources.open_db()
    except sources.DatabaseUnavailable as exc:
        return _message(request, f"The attribution database cannot be read: {exc}")
    with contextlib.closing(db):
        try:
            context = views.report_context(db, request.query_params)
        except Exception as exc:  # a table missing, a locked file: say so on the page
            if sources.REPORT_TABLE in str(exc).lower():
                return _message(request, f"No report yet in {db.source}: the pipeline has not run on this database.")
            return _message(request, f"The attribution database cannot be read: {type(exc).__name__}: {exc}")
    return _render("report.html.j2", request, title="Attribution report", page="Report", **context)


@router.get("/report.csv", response_class=Response)
def report_csv(request: Request):
    try:
        with contextlib.closing(sources.open_db()) as db:
            selection, _, _ = views.pick(request.query_params, sources.report_channels(db), sources.report_bounds(db))
            rows = sources.report_rows(db, selection)
    except sources.DatabaseUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"The attribution database cannot be read: {exc}") from exc
    name = views.csv_name(selection)
    return Response(views.selection_csv(rows), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store"})


@router.get("/issues", response_class=HTMLResponse)
def issues_page(request: Request, reason: str | None = None):
    try:
        db = sources.open_db()
    except sources.DatabaseUnavailable as exc:
        view = sources.IssuesView(error=str(exc))
    else:
        with contextlib.closing(db):
            try:
                view = sources.read_issues(db, views.ISSUES_LIMIT, reason or None)
            except Exception as exc:  # e.g. a locked file: the page says so
                view = sources.IssuesView(source=db.source, error=f"{type(exc).__name__}: {exc}")
    return _render("issues.html.j2", request, title="Attribution issues", page="Issues", view=view,
                   reason=reason or None)


def _export_rows(path: Path) -> int | None:
    """Data rows of an exported CSV (its lines less the header); ``None`` if unreadable."""
    try:
        with path.open("rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    except OSError:
        return None


@router.get("/exports", response_class=HTMLResponse)
def exports_page(request: Request, all: int = 0):  # noqa: A002  (the query parameter's name)
    folder = local_output_dir()  # None for an object store: the pages list local files only
    found = sources.list_reports(folder)
    counts = [_export_rows(r.csv) if r.csv and i < EXPORT_ROWS_SCAN_LIMIT else None for i, r in enumerate(found)]
    # Scheduled runs over days without conversions still export their (often empty) day.
    listed = [(r, n) for r, n in zip(found, counts, strict=True) if all or not (r.days == 1 and n == 0)]
    shown = listed[: views.REPORTS_LIMIT]
    return _render("exports.html.j2", request, title="Exported reports", page="Exported files", folder=folder,
                   reports=shown, hidden=len(found) - len(listed), more=len(listed) if len(listed) > len(shown) else 0)


@router.get("/static/{name}", response_class=FileResponse)
def static(name: str):
    if name not in STATIC_FILES:
        raise HTTPException(status_code=404, detail="No such file")
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})


@router.get("/files/{name}", response_class=FileResponse)
def report_file(name: str):
    path = sources.report_file(local_output_dir(), name)
    if path is None:
        raise HTTPException(status_code=404, detail="No such report file")
    if path.suffix == ".html":
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=_CHART_HEADERS)
    return FileResponse(path, media_type="text/csv; charset=utf-8", filename=path.name,
                        headers={"X-Content-Type-Options": "nosniff"})


def create_app(*, require_auth: bool = True) -> FastAPI:
    """The pages' FastAPI app. ``require_auth=False`` is for tests that run it outside the API server."""
    dependencies = []
    if require_auth:  # Airflow's own check: a UI or API token of a user who may read the DAG's runs
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import requires_access_dag

        dependencies = [Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))]
    app = FastAPI(
        title="Attribution report",
        description="Channel report, open attribution issues and exported files of the ihc_attribution DAG.",
        dependencies=dependencies,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(router)
    return app
