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


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata database in the throw-away AIRFLOW_HOME (once per session)."""
    from airflow.utils.db import initdb

    initdb()
    return _AIRFLOW_HOME
