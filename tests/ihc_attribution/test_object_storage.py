"""Outputs through ``ObjectStoragePath``: a local folder, a ``file://`` URL and an fsspec in-memory store
give the same files; the task's result (and so the asset event) carries their URL; the report
table has a standard URI."""

from __future__ import annotations

import json
import uuid

import pytest

from ihc_attribution import export, tasks
from ihc_attribution.db import Database
from tests.helpers import random_db, run_pipeline

RANGE = {"start_date": "2024-01-01", "end_date": "2024-01-10"}
NAME = "channel_reporting_2024-01-01_2024-01-10"


@pytest.fixture(scope="module")
def attributed_db(tmp_path_factory):
    path = random_db(tmp_path_factory.mktemp("objstore") / "db.sqlite", seed=3)
    run_pipeline(path, "range", "2024-01-01", "2024-01-10")
    return path


def _export(monkeypatch, db_path, base: str) -> dict:
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db_path)}))
    monkeypatch.setenv("ATTRIBUTION_OUTPUT_BASE_URL", base)
    return tasks.export_csv({"params": RANGE, "run_id": "export"})


def test_local_folder_file_url_and_memory_store_get_the_same_files(monkeypatch, attributed_db, tmp_path):
    from airflow.sdk import ObjectStoragePath

    local = _export(monkeypatch, attributed_db, str(tmp_path / "plain"))
    as_url = _export(monkeypatch, attributed_db, f"file://{tmp_path / 'url'}")
    assert as_url["url"] == f"file://{tmp_path / 'url' / NAME}.csv"
    bucket = f"memory://ihc-{uuid.uuid4().hex[:8]}/reports"
    memory = _export(monkeypatch, attributed_db, bucket)

    csv_bytes = (tmp_path / "plain" / f"{NAME}.csv").read_bytes()
    assert csv_bytes.count(b"\n") > 5, "the comparison must not be vacuous"
    assert local["url"] == f"file://{tmp_path / 'plain' / NAME}.csv" and local["path"] == str(tmp_path / "plain" / f"{NAME}.csv")
    assert (tmp_path / "url" / f"{NAME}.csv").read_bytes() == csv_bytes
    assert memory["url"] == f"{bucket}/{NAME}.csv" and memory["path"] == memory["url"]
    assert memory["chart_url"] == f"{bucket}/{NAME}.html"
    assert ObjectStoragePath(memory["url"]).read_bytes() == csv_bytes
    assert ObjectStoragePath(memory["chart_url"]).read_bytes() == (tmp_path / "plain" / f"{NAME}.html").read_bytes()


def test_a_failed_write_to_an_object_store_leaves_the_previous_object(monkeypatch):
    target = export.output_base(f"memory://ihc-{uuid.uuid4().hex[:8]}/out") / "report.csv"
    with export.atomic_write(target) as handle:
        handle.write("old complete file\n")
    with pytest.raises(RuntimeError), export.atomic_write(target) as handle:
        handle.write("half of a new")
        raise RuntimeError("the task was killed")
    assert target.read_text() == "old complete file\n"


def test_a_relative_folder_is_taken_from_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    base = export.output_base("out")
    assert str(base) == f"file://{tmp_path / 'out'}" and export.is_local(base)


def test_the_report_table_has_a_standard_uri(attributed_db):
    db = Database.connect_sqlite(str(attributed_db))
    try:
        assert db.table_uri("channel_reporting") == f"sqlite://localhost{attributed_db}/main/channel_reporting"
    finally:
        db.close()


def test_the_report_table_uri_is_a_valid_asset_uri(attributed_db):
    from airflow.sdk import Asset

    assert Asset(uri=f"sqlite://localhost{attributed_db}/main/channel_reporting").uri == f"sqlite://localhost{attributed_db}/main/channel_reporting"
    pg = Asset(uri="postgres://127.0.0.1:5432/warehouse/public/channel_reporting")
    assert pg.uri == "postgres://127.0.0.1:5432/warehouse/public/channel_reporting"
