"""The distributions as pip builds them: the production wheel carries the package ihc_attribution
with its SQL, templates and static files and none of the development tools, which are the
distribution of include/ihc_attribution_dev.

The wheels are built from a copy of the sources, so that no build directory or metadata is left
in the working tree (metadata next to the sources would show Airflow the entry points twice).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "ihc_attribution"
DEV_PACKAGE = ROOT / "include" / "ihc_attribution_dev"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


def build_wheel(source: Path, out: Path) -> dict[str, bytes]:
    """Name -> content of the files in the wheel pip builds from ``source`` (offline, with the
    installed setuptools)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def package_files(folder: Path) -> set[str]:
    """Paths as a wheel names them (``package/relative/path``) of the files in a package folder."""
    return {
        path.relative_to(folder.parent).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def production_wheel(tmp_path_factory) -> dict[str, bytes]:
    source = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "include", source / "include", ignore=IGNORED)
    return build_wheel(source, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def dev_wheel(tmp_path_factory) -> dict[str, bytes]:
    source = tmp_path_factory.mktemp("dev") / DEV_PACKAGE.name
    shutil.copytree(DEV_PACKAGE, source, ignore=IGNORED)
    return build_wheel(source, tmp_path_factory.mktemp("dev-wheel"))


def test_production_wheel_holds_no_development_module(production_wheel):
    top_level = {name.split("/")[0] for name in production_wheel}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"ihc_attribution"}
    assert not [name for name in production_wheel if "ihc_attribution_dev" in name]


def test_production_wheel_holds_every_file_of_the_package(production_wheel):
    expected = package_files(PACKAGE)
    assert {"ihc_attribution/sql/package_schema.sql", "ihc_attribution/sql/challenge_schema.sql"} <= expected
    assert any(name.startswith("ihc_attribution/report_ui/templates/") for name in expected)
    assert any(name.startswith("ihc_attribution/report_ui/static/") for name in expected)
    missing = expected - set(production_wheel)
    assert not missing, f"add them to [tool.setuptools.package-data] in pyproject.toml: {sorted(missing)}"


def test_production_wheel_registers_the_provider_and_the_plugin(production_wheel):
    (name,) = [name for name in production_wheel if name.endswith(".dist-info/entry_points.txt")]
    entry_points = production_wheel[name].decode()
    assert "[apache_airflow_provider]" in entry_points and "ihc_attribution.provider:get_provider_info" in entry_points
    assert "[airflow.plugins]" in entry_points and "ihc_attribution.report_ui.plugin:" in entry_points


def test_dev_wheel_holds_the_development_tools_only(dev_wheel):
    modules = {name for name in dev_wheel if not name.split("/")[0].endswith(".dist-info")}
    assert modules == package_files(DEV_PACKAGE) - {"ihc_attribution_dev/pyproject.toml"}


def test_both_distributions_have_one_version():
    production, dev = (tomllib.loads((folder / "pyproject.toml").read_text())["project"] for folder in (ROOT, DEV_PACKAGE))
    assert dev["version"] == production["version"]
    assert production["name"] in dev["dependencies"], "the demo data take the source tables' DDL from the package"


def test_production_code_never_imports_the_development_tools():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in (PACKAGE, ROOT / "dags", ROOT / "plugins")
        for path in folder.rglob("*.py")
        if "ihc_attribution_dev" in path.read_text(encoding="utf-8")
    ]
    assert not offenders, "the production wheel and the DAG must run without ihc_attribution_dev"
