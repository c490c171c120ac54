"""The installed distribution registers the provider (connection type ``ihc``) and the plugin."""

from __future__ import annotations

from importlib import metadata

from ihc_attribution import provider


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return [ep for ep in metadata.entry_points(group=group) if ep.dist and ep.dist.name == "ihc-attribution-airflow"]


def test_entry_points_of_the_installed_distribution():
    (info,) = _entry_points("apache_airflow_provider")
    assert info.load() is provider.get_provider_info
    (plugin,) = _entry_points("airflow.plugins")
    assert plugin.load().name == "attribution_report"


def test_airflow_knows_the_ihc_connection_type_its_form_and_hook():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    # Tasks find the hook through the task SDK's manager, the UI the form through the core's.
    hook = ProvidersManagerTaskRuntime().hooks["ihc"]
    assert hook.hook_class_name == "ihc_attribution.ihc.hook.IhcHook" and hook.connection_type == "ihc"
    manager = ProvidersManager()
    assert "ihc-attribution-airflow" in manager.providers
    widgets = manager.connection_form_widgets
    assert {f"extra__ihc__{name}" for name in provider.CONN_FIELDS} <= set(widgets)
    behaviour = manager.field_behaviours["ihc"]
    assert behaviour["hidden_fields"] == ["login"] and behaviour["relabeling"]["password"] == "API key"


def test_form_fields_are_settings_the_hook_reads():
    from ihc_attribution.ihc.settings import KNOWN_EXTRAS

    assert set(provider.CONN_FIELDS) <= set(KNOWN_EXTRAS)
