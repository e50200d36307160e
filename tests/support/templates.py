"""Writing a template's directory, as an operator would (docs/templates.md)."""

from __future__ import annotations

from pathlib import Path


def write_template(folder: Path, name: str, subject: str, text: str, html: str | None = None) -> Path:
    directory = folder / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "subject.txt").write_text(subject, encoding="utf-8")
    (directory / "body.txt").write_text(text, encoding="utf-8")
    if html is not None:
        (directory / "body.html").write_text(html, encoding="utf-8")
    return directory
