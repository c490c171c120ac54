"""Provider metadata: what ``pip install`` registers with Airflow (entry point ``apache_airflow_provider``).

It makes the connection type ``ihc`` known to Airflow with its hook, its form fields (API key,
conversion type, limits) and a working *Test* button. This module is read by every
Airflow component at start-up, so it imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

CONN_TYPE = "ihc"

#: Form fields of the settings most often changed, stored in the connection's extra.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "conv_type_id": {
        "label": "Conversion type id",
        "schema": {"type": ["string", "null"]},
        "description": "trained conversion type (required)",
    },
    "max_journeys_per_request": {
        "label": "Max journeys per request",
        "schema": {"type": ["integer", "null"], "default": 100, "minimum": 1},
    },
    "max_sessions_per_request": {
        "label": "Max sessions per request",
        "schema": {"type": ["integer", "null"], "default": 3000, "minimum": 1},
        "description": "3000 in production, 200 for free test accounts",
    },
}

#: Which standard fields the form hides, relabels and pre-fills.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["login"],
    "relabeling": {"password": "API key", "schema": "Scheme (http or https)"},
    "placeholders": {
        "host": "api.ihc-attribution.com",
        "schema": "https",
        "password": "IHC API key",
        "extra": '{"conv_type_id": "<your conversion type>"}',
    },
}


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata, in the form of the providers' ``get_provider_info``."""
    from importlib.metadata import PackageNotFoundError, version

    from ihc_attribution.settings import provider_config

    try:
        versions = [version("ihc-attribution-airflow")]
    except PackageNotFoundError:  # run from a checkout without installing
        versions = []
    return {
        "package-name": "ihc-attribution-airflow",
        "name": "IHC attribution",
        "description": "Marketing attribution with the IHC attribution API: hook, DAG stages and report plugin.",
        "versions": versions,
        "hooks": [{"integration-name": "IHC attribution", "python-modules": ["ihc_attribution.ihc.hook"]}],
        "connection-types": [
            {
                "hook-class-name": "ihc_attribution.ihc.hook.IhcHook",
                "hook-name": "IHC attribution API",
                "connection-type": CONN_TYPE,
                "ui-field-behaviour": {key.replace("_", "-"): value for key, value in UI_FIELD_BEHAVIOUR.items()},
                "conn-fields": CONN_FIELDS,
            }
        ],
        "notifications": ["ihc_attribution.notify.RunFailureNotifier"],
        "config": provider_config(),
    }
