"""Every setting in one place: the ``[attribution]`` section, read from the environment or Airflow's configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ihc_attribution import settings


def test_the_environment_wins_then_airflows_configuration_then_the_default(monkeypatch):
    monkeypatch.delenv("ATTRIBUTION_LATE_DATA_DAYS", raising=False)
    monkeypatch.delenv("AIRFLOW__ATTRIBUTION__LATE_DATA_DAYS", raising=False)
    assert settings.get("late_data_days") == 3
    monkeypatch.setenv("AIRFLOW__ATTRIBUTION__LATE_DATA_DAYS", "5")
    assert settings.get("late_data_days") == 5
    monkeypatch.setenv("ATTRIBUTION_LATE_DATA_DAYS", "7")
    assert settings.get("late_data_days") == 7


@pytest.mark.parametrize(("option", "value"), [
    ("late_data_days", "-1"),
    ("ihc_concurrency", "0"),
    ("task_timeout_minutes", "soon"),
    ("csv_model_columns", "maybe"),
    ("wait_poke_seconds", "0"),
])
def test_a_bad_value_fails_naming_the_variable(monkeypatch, option, value):
    name = settings.env_name(option)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        settings.wait_poke_seconds() if option == "wait_poke_seconds" else settings.get(option)


def test_every_option_has_a_valid_default(monkeypatch):
    for name, (kind, _default, description) in settings.OPTIONS.items():
        assert description.endswith("."), name
        monkeypatch.delenv(settings.env_name(name), raising=False)
        value = settings.get(name)
        assert isinstance(value, {"integer": int, "float": float, "boolean": bool, "string": str}[kind]), name
        if kind == "boolean":
            assert settings._text(name) in ("true", "false")


def test_airflow_config_lists_the_section_with_its_defaults(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTRIBUTION_", "AIRFLOW__ATTRIBUTION__"))}
    env |= {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__ATTRIBUTION__LATE_DATA_DAYS": "5"}
    airflow = Path(sys.executable).with_name("airflow")
    out = subprocess.run([str(airflow), "config", "list", "--section", "attribution", "--show-values"], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "[attribution]" in out
    assert "ihc_concurrency = 4" in out and "late_data_days = 5" in out
    assert all(f"{name} =" in out for name in settings.OPTIONS), out


def test_provider_config_matches_airflows_schema():
    import jsonschema
    from airflow import __file__ as airflow_init

    schema = json.loads((Path(airflow_init).parent / "provider_info.schema.json").read_text())
    from ihc_attribution.provider import get_provider_info

    jsonschema.validate(get_provider_info(), schema)
