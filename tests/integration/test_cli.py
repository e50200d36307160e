"""``welcome-mailer contact ...`` and ``suppressions import``: the same operations as the UI, from a shell."""

from __future__ import annotations

import json

import pytest

from welcome_mailer import cli, pipeline
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.migrate import upgrade


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.setenv("WELCOME_MAILER_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("WELCOME_MAILER_DROPZONE", str(tmp_path / "dropzone"))
    monkeypatch.setenv("WELCOME_MAILER_ERASE_KEY", "k")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = connect(url)
    upgrade(engine)
    ledger = Ledger(engine)
    path = tmp_path / "in.csv"
    path.write_text("Jane, jane@example.com, 1\nJoe, joe@example.com, 2\n")
    ledger.renew_lease("run-1")
    pipeline.parse_file(ledger, "run-1", path, tmp_path / "rejected.csv")
    ledger.claim("run-1", 50, 10)
    engine.dispose()
    return url


def test_lookup_suppress_release_erase_and_import(url, tmp_path, capsys):
    assert cli.main(["contact", "lookup", "JANE@example.com", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "jane@example.com: sending" in out and " pending key=welcome-" in out, "claimed with its first attempt"
    assert f"{tmp_path / 'in.csv'}, line 1" in out, "the file the run parsed, as the ledger recorded it"
    assert cli.main(["contact", "suppress", "jane@example.com", "--url", url]) == 2
    assert "needs --reason" in capsys.readouterr().err
    assert cli.main(["contact", "suppress", "jane@example.com", "--reason", "asked", "--url", url]) == 0
    assert cli.main(["contact", "release", "joe@example.com", "--reason", "x", "--url", url]) == 1
    assert "not failed" in capsys.readouterr().out
    assert cli.main(["contact", "lookup", "jane@example.com", "--json", "--url", url]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["source_file"] == str(tmp_path / "in.csv")
    assert view["status"] == "suppressed" and view["actions"][0]["actor"].startswith("cli:")
    listing = tmp_path / "list.csv"
    listing.write_text("email\nnew@example.com\njoe@example.com\nnot-an-address\n")
    assert cli.main(["suppressions", "import", str(listing), "--reason", "CRM", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "suppressed 2, already 0, erased 0, invalid 1"
    assert cli.main(["contact", "erase", "jane@example.com", "--reason", "GDPR", "--url", url]) == 0
    assert "sent_contacts 1" in capsys.readouterr().out
    assert cli.main(["contact", "lookup", "jane@example.com", "--url", url]) == 0
    assert "erased at" in capsys.readouterr().out
    assert cli.main(["contact", "lookup", "nobody@example.com", "--url", url]) == 3
