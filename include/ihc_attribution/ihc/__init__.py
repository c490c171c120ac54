"""The IHC attribution API: settings, client, answer contract, errors and the Airflow hook.

Knows nothing of the database: ``ihc_attribution.api_stage`` reads the requests and stores the answers.
"""
