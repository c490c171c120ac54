"""IHC attribution for Apache Airflow: customer journeys, the IHC API hook, the report and its UI.

The DAG file (``dags/ihc_attribution_dag.py``) calls one stage function of :mod:`ihc_attribution.tasks`
per task. Installing the distribution registers the ``ihc`` connection type (a provider) and the
report plugin with Airflow.
"""
