"""The package's imports point down only: a shared vocabulary and plain helpers at the bottom, then the
ledger and the transports, then the outcome sources, then the pipeline and the hooks, then what Airflow
and people call (the web app, the CLI, the plugin). Read from the source with ``ast``, lazy imports
inside functions included, so a cycle cannot hide behind a function-level import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "welcome_mailer"

# Each top-level module or subpackage of welcome_mailer, by layer. A module may import its own layer's
# modules and lower layers', never a higher layer's.
LAYERS = [
    # what every layer shares, and plain helpers that know nothing of the ledger or a provider
    {
        "vocabulary",
        "settings",
        "contacts",
        "greeting",
        "unsubscribe",
        "task_memory",
        "storage",
        "report",
        "run_files",
    },
    {"ledger", "migrations", "transports"},
    {"outcomes", "templates"},
    {
        "pipeline",
        "hooks",
        "dropzone",
        "operator_actions",
        "contact_list",
        "report_task",
        "run_failure",
        "template_tools",
    },
    {"web", "cli", "plugin", "airflow_provider"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}
# Pure domain code: importable and testable without Airflow.
WITHOUT_AIRFLOW = {
    *("vocabulary", "contacts", "greeting", "unsubscribe", "ledger", "transports", "outcomes"),
    *("pipeline", "operator_actions", "dropzone", "report", "templates", "template_tools", "contact_list"),
}


def component(module: str) -> str:
    """welcome_mailer.ledger.claims -> ledger; welcome_mailer -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_by(tree: ast.AST) -> list[str]:
    """Every module an absolute import in the tree names, at any depth (inside functions too)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "welcome_mailer":  # from welcome_mailer import pipeline
                names.extend(f"welcome_mailer.{alias.name}" for alias in node.names)
            else:
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def imports() -> dict[str, set[tuple[str, str]]]:
    """Per component, (file, imported module) for every import in its files."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(), str(path))
        found.setdefault(component(module), set()).update((str(rel), name) for name in imported_by(tree))
    return found


IMPORTS = imports()


def test_every_module_has_a_layer():
    unplaced = set(IMPORTS) - set(LAYER) - {"__init__"}
    assert not unplaced, f"give these a layer in LAYERS: {sorted(unplaced)}"


@pytest.mark.parametrize("importer", sorted(set(IMPORTS) - {"__init__"}))
def test_imports_point_down(importer):
    upward = sorted(
        (path, name)
        for path, name in IMPORTS[importer]
        if name.startswith("welcome_mailer.")
        and component(name) != "__init__"
        and LAYER.get(component(name), 0) > LAYER[importer]
    )
    assert not upward, f"{importer} (layer {LAYER[importer]}) imports from a higher layer: {upward}"


def test_no_cycle_between_modules():
    graph = {
        importer: {component(n) for _, n in names if n.startswith("welcome_mailer.")} - {importer, "__init__"}
        for importer, names in IMPORTS.items()
    }

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not cycles, f"these modules import themselves through others: {cycles}"


@pytest.mark.parametrize("name", sorted(WITHOUT_AIRFLOW))
def test_domain_code_imports_nothing_from_airflow(name):
    uses = sorted((path, n) for path, n in IMPORTS.get(name, ()) if n == "airflow" or n.startswith("airflow."))
    assert not uses, f"{name} must work without Airflow: {uses}"


def test_the_walker_sees_lazy_imports():
    """A function-level import counts as much as a module-level one: the guards above are not vacuous."""
    tree = ast.parse("def f():\n    from welcome_mailer.web import app\n    import airflow.sdk\n")
    assert imported_by(tree) == ["welcome_mailer.web", "airflow.sdk"]
    assert ("welcome_mailer/ledger/claims", "welcome_mailer.vocabulary") in IMPORTS["ledger"]
