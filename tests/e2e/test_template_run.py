"""welcome_emails with the operator's template, through `airflow dags test`: the Param picks it, each
contact gets their own values (from the mock ESP's log), a template that cannot be used sends nothing."""

from __future__ import annotations

import pytest

from tests.support.dags_test import run_welcome, sqlite_ledger
from tests.support.templates import write_template

pytestmark = pytest.mark.slow


def test_the_template_param_picks_the_operators_template(migrated_airflow_home, workspace, start_esp):
    """Its variables are the row's columns: each contact's message carries their own name and city (the
    seed format's fifth column), resends of blocked contacts too."""
    esp = start_esp(hold_rate=0, blocked_rate=0.2, delivered_rate=0.8, bounced_rate=0, seed=7)
    folder = workspace / "templates"
    spring = write_template(
        folder,
        "spring",
        "Spring hello, {{ name }}\n",
        "Hi {{ name }} from {{ city }}\n",
        "<p>Hi {{ name }} from {{ city }}</p>\n",
    )
    path = workspace / "data" / "c.csv"
    rows = "".join(
        f"Person {i}, p{i}@example.com, 555-{i}, {i} Main St, City {i * 7}, CA, 9{i:04}\n" for i in range(40)
    )
    path.write_text(rows + ", nobody@example.com, 555, 1 Main St, Nowhere, CA, 90000\n")
    connection, _ = sqlite_ledger(workspace)
    env = {"WELCOME_MAILER_TEMPLATES_DIR": str(folder)}
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, str(path), env, template="spring")
    assert result.state == "success", result.output[-3000:]
    assert result.report["template"] == "spring" and len(result.report["template_hash"]) == 64
    assert result.report["rejected"] == 1  # the row without a name: the template needs one
    messages = esp.messages()
    assert {m["to"] for m in messages} == {f"p{i}@example.com" for i in range(40)}
    assert len(messages) > 40, "blocked contacts were resent (rendered from the ledger)"
    for m in messages:
        n = int(m["to"][1:].split("@")[0])
        assert (m["subject"], m["text"], m["html"]) == (
            f"Spring hello, Person {n}",
            f"Hi Person {n} from City {n * 7}",
            f"<p>Hi Person {n} from City {n * 7}</p>",
        )
    assert spring.is_dir()


@pytest.mark.parametrize(("name", "files", "message"), [
    ("autumn", None, "unknown template 'autumn'"),
    ("broken", ("Hi\n", "{% if %}\n"), "broken/body.txt, line 1"),
    ("shoes", ("Hi\n", "Hi\n{{ shoe_size }}\n"), "shoes/body.txt, line 2: no contact has a value for shoe_size"),
])  # fmt: skip
def test_a_template_that_cannot_be_used_fails_the_run_and_sends_nothing(
    migrated_airflow_home, workspace, esp, name, files, message
):
    folder = workspace / "templates"
    folder.mkdir()
    if files:
        write_template(folder, name, *files)
    path = workspace / "data" / "c.csv"
    path.write_text("Ann, ann@example.com\n")
    connection, _ = sqlite_ledger(workspace)
    env = {"WELCOME_MAILER_TEMPLATES_DIR": str(folder)}
    result = run_welcome(migrated_airflow_home, workspace, esp, connection, str(path), env, template=name)
    assert result.state == "failed"
    assert message in result.output
    assert esp.messages() == []
