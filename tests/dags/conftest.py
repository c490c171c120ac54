"""Fixtures of the DAG's end-to-end tests."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT


@pytest.fixture
def dag(airflow_db):
    """A freshly parsed DAG: ``dag.test(run_conf=...)`` leaves the conf in the DAG's params."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("ihc_attribution")
