"""Airflow finds the package the way it finds provider packages: its plugin through the airflow.plugins
entry point (nothing of it in the plugins folder), its connection type and form through
apache_airflow_provider. Run in a fresh interpreter, as an Airflow component would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.support import PROJECT_ROOT

PROBE = textwrap.dedent(
    """
    import json, sys
    from airflow import plugins_manager
    from airflow.providers_manager import ProvidersManager

    plugins, errors = plugins_manager._get_plugins()
    apps, _ = plugins_manager.get_fastapi_plugins()
    providers = ProvidersManager()
    print(json.dumps({
        "plugins": {p.name: str(p.source) for p in plugins},
        "errors": errors,
        "apps": [a["url_prefix"] for a in apps],
        "provider_version": providers.providers["welcome-mailer"].version,
        "hook": providers.hooks["welcome_mailer_esp"].hook_class_name,
        "widgets": sorted(k for k in providers.connection_form_widgets if "welcome_mailer" in k),
        "behaviour": providers.field_behaviours["welcome_mailer_esp"],
        "modules": {
            name: module.__file__
            for name, module in sys.modules.items()
            if (getattr(module, "__file__", None) or "").startswith(sys.argv[1])
        },
    }))
    """
)


@pytest.fixture(scope="module")
def discovered() -> dict:
    env = {
        **os.environ,
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__LAZY_LOAD_PROVIDERS": "False",  # also load plugins that providers declare
    }
    package_dir = str(PROJECT_ROOT / "src" / "welcome_mailer")
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, package_dir], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_plugin_comes_from_the_entry_point_once_and_without_errors(discovered):
    assert discovered["errors"] == {}
    assert list(discovered["plugins"]) == ["welcome_mailer"]
    assert "EntryPoint(name='welcome_mailer'" in discovered["plugins"]["welcome_mailer"]
    assert discovered["apps"] == ["/welcome-mailer"]


def test_no_module_of_the_package_is_imported_twice(discovered):
    modules = discovered["modules"]
    assert modules, "the plugin's modules were loaded"
    outside = {name for name in modules if name != "welcome_mailer" and not name.startswith("welcome_mailer.")}
    assert not outside, f"loaded under a second, top-level name: {sorted(outside)}"
    assert len(set(modules.values())) == len(modules), "one file, one module"


def test_loading_plugins_imports_nothing_heavy(discovered):
    assert not any(name.startswith(("welcome_mailer.web", "welcome_mailer.ledger")) for name in discovered["modules"])


def test_the_connection_type_and_its_form_are_registered(discovered):
    assert discovered["hook"] == "welcome_mailer.hooks.esp.EspHook"
    assert discovered["widgets"] == ["extra__welcome_mailer_esp__timeout"]
    assert discovered["behaviour"]["relabeling"]["password"] == "API key"
    assert discovered["provider_version"]
