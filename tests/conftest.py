"""Test set-up shared by the whole suite.

Airflow reads its configuration when first imported, so the environment is prepared here, at
collection time: a throw-away AIRFLOW_HOME, no example DAGs, the project's DAG folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="attribution-tests-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["ATTRIBUTION_TASK_RETRIES"] = "0"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property-based tests: "ci" (the default) is derandomised, so every `make test` runs the same
# examples; "thorough" draws new random examples, many more of them, for a longer local search:
# HYPOTHESIS_PROFILE=thorough make test PYTEST_ARGS=tests/ihc_attribution/test_properties.py
settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", parent=settings.get_profile("ci"), max_examples=500, derandomize=False
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata database in the throw-away AIRFLOW_HOME (once per session)."""
    from airflow.utils.db import initdb

    initdb()
    return _AIRFLOW_HOME
