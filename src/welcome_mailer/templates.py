"""The operator's welcome email: templates of a subject, a plain-text body and an optional HTML body.

A template is a directory under the templates folder (``WELCOME_MAILER_TEMPLATES_DIR``, default
``<home>/templates``; a local directory, or a prefix on object storage like the data roots, opened by the
caller with ``storage.location``) holding ``subject.txt``, ``body.txt`` and optionally ``body.html``; its name is the
directory's. ``welcome`` is built in (the case study's "Hi {name}, Welcome!", subject "Welcome!"); a
``welcome`` directory in the folder replaces it.

Rendering: Jinja2's sandboxed environment with StrictUndefined. The HTML body is autoescaped, the subject
and the text body are not (they are not HTML). The subject is rendered as text and refused when it holds a
control character (CR, LF, tab, ...): nothing a template or a contact's value holds reaches a header as
anything but the subject's text. The transports keep their own header guarantees on top.

Variables: every column of the contact's row: ``name`` and ``email`` as the parser normalised them, the
file's other columns by their header's names (``contacts.column_variable``: "Zip Code" is ``zip_code``),
or, in a file without a header, ``phone``, ``street``, ``city``, ``state``, ``zip``; and ``unsubscribe_url``
when one-click unsubscribe is configured. The parser keeps, and the ledger carries to the sends and
resends, only the columns the template uses (``CompiledTemplate.columns``). An empty value is a missing
one: ``{{ name }}`` for a contact without a name is refused (the row is rejected at parse, with the
reason); ``{{ name | default("there") }}`` greets them instead.

Checked before anything is sent: a syntax error (file and line) fails ``compile_template``, a column the
contact file does not have fails ``check_columns`` (file and line), both at parse. Compiled once per
process and content (cached by content hash). Pure code: no Airflow import.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape
from sqlalchemy import Engine, select

from welcome_mailer.contacts import Contact, RejectedRow
from welcome_mailer.greeting import SUBJECT, welcome_text
from welcome_mailer.ledger import bulk
from welcome_mailer.ledger.schema import run_templates
from welcome_mailer.storage import describe
from welcome_mailer.transports import OutgoingMessage
from welcome_mailer.unsubscribe import UnsubscribeSettings, unsubscribe_url
from welcome_mailer.vocabulary import utcnow

BUILTIN = "welcome"
# The columns every contact has (welcome_mailer.contacts.Contact); any other variable is a column of the file.
CONTACT_VARIABLES = ("name", "email")
UNSUBSCRIBE_VARIABLE = "unsubscribe_url"
SUBJECT_FILE, TEXT_FILE, HTML_FILE = "subject.txt", "body.txt", "body.html"
MAX_FILE_BYTES = 256 * 1024  # a welcome email, not a newsletter archive
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TemplateError(ValueError):
    """A template that cannot be used (unknown, unreadable, a syntax error, an unknown variable): the
    message names the file and line, for the person who wrote it."""


class RefusedMessage(ValueError):
    """This contact's message cannot be rendered (a value the template needs is missing, a subject with a
    line break): the contact is rejected, never sent half-rendered."""


@dataclass(frozen=True)
class TemplateSource:
    """A template's text as read, before compiling. ``origin``: where it came from (a directory, or
    "built-in"), for messages; not part of its identity."""

    name: str
    subject: str
    text: str
    html: str | None = None
    origin: str = field(default="built-in", compare=False)

    @property
    def hash(self) -> str:
        """The content's SHA-256 (hex): the version a run snapshots and every attempt records."""
        content = json.dumps([self.subject, self.text, self.html], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(content.encode("utf-8")).hexdigest()

    @property
    def version(self) -> str:
        return self.hash[:12]


# The case study's text as a template: rendered for a contact it is byte for byte ``greeting.welcome_text``
# (tests/unit/test_templates.py proves it), which renders it when this very content is used.
WELCOME = TemplateSource(BUILTIN, SUBJECT, 'Hi {{ name | default("there") }}, Welcome!')


# The templates folder: a local path, or an ObjectStoragePath (storage.location; Airflow's, so not named
# here), read through the same pathlib calls.
Folder = Any


def templates_folder(folder: Folder) -> Folder:
    if not folder:
        return None
    return Path(folder) if isinstance(folder, str) else folder


def list_templates(folder: Folder) -> list[TemplateSource]:
    """Every template: the folder's directories that hold a subject and a text body, and the built-in
    ``welcome`` unless the folder replaces it. Sorted by name."""
    found: dict[str, TemplateSource] = {BUILTIN: WELCOME}
    root = templates_folder(folder)
    if root is not None and root.is_dir():
        for directory in sorted(root.iterdir()):
            if directory.is_dir() and _NAME.fullmatch(directory.name) and (directory / TEXT_FILE).is_file():
                found[directory.name] = load_template(directory.name, root)
    return [found[name] for name in sorted(found)]


def load_template(name: str, folder: Folder) -> TemplateSource:
    """The template ``name`` from the folder (or the built-in ``welcome``). Raises TemplateError."""
    if not name or not _NAME.fullmatch(name):
        raise TemplateError(f"template name {name!r}: letters, digits, '_', '.', '-' only (a directory name)")
    root = templates_folder(folder)
    directory = root / name if root is not None else None
    if directory is None or not directory.is_dir():
        if name == BUILTIN:
            return WELCOME
        known = ", ".join(t.name for t in list_templates(folder))
        raise TemplateError(f"unknown template {name!r}: no directory {directory or name} (templates: {known})")
    missing = [f for f in (SUBJECT_FILE, TEXT_FILE) if not (directory / f).is_file()]
    if missing:
        raise TemplateError(f"template {name!r} ({directory}) lacks {' and '.join(missing)}")
    html = _read(directory / HTML_FILE) if (directory / HTML_FILE).is_file() else None
    # A subject file ends with a line break (editors add one): the subject is its text without it.
    subject = _read(directory / SUBJECT_FILE).strip()
    return TemplateSource(name, subject, _read(directory / TEXT_FILE), html, origin=describe(str(directory)))


def _read(path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TemplateError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


# -- compiling --------------------------------------------------------------------------------------
_TEXT_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None = None


class CompiledTemplate:
    """A template ready to render, its syntax checked. Make it with ``compile_template`` (cached); check
    it against a contact file's columns with ``check_columns``."""

    def __init__(self, source: TemplateSource, unsubscribe: UnsubscribeSettings) -> None:
        self.source = source
        self.unsubscribe = unsubscribe
        parts = [(SUBJECT_FILE, source.subject, _TEXT_ENV), (TEXT_FILE, source.text, _TEXT_ENV)]
        if source.html is not None:
            parts.append((HTML_FILE, source.html, _HTML_ENV))
        compiled: dict[str, _Part] = {}
        self.variables: set[str] = set()
        self._uses: list[tuple[str, str, set[str]]] = []  # (where, content, variables) of each part
        for filename, content, env in parts:
            where = f"{source.origin}/{filename}" if source.origin != "built-in" else f"{source.name} ({filename})"
            try:
                tree = env.parse(content)
                # Jinja's own globals (range, dict, ...) are found by the same walk: they are no column.
                used = meta.find_undeclared_variables(tree) - set(env.globals)
                compiled[filename] = _Part(env.from_string(content), _segments(tree), bool(env.autoescape))
            except TemplateSyntaxError as exc:
                raise TemplateError(f"{where}, line {exc.lineno}: {exc.message}") from None
            if UNSUBSCRIBE_VARIABLE in used and not unsubscribe.enabled:
                raise TemplateError(
                    f"{where}, line {_line_of(content, UNSUBSCRIBE_VARIABLE)}: no contact has a value for "
                    f"{UNSUBSCRIBE_VARIABLE}: it needs one-click unsubscribe configured"
                )
            self.variables |= used
            self._uses.append((where, content, used))
        # The other columns of the contact's row it uses: what the parser keeps and the ledger carries.
        self.columns = tuple(sorted(self.variables - {*CONTACT_VARIABLES, UNSUBSCRIBE_VARIABLE}))
        self._subject, self._text, self._html = compiled[SUBJECT_FILE], compiled[TEXT_FILE], compiled.get(HTML_FILE)
        self._needs_unsubscribe = UNSUBSCRIBE_VARIABLE in self.variables
        # (has a name, the fields it has) -> why such a contact is refused (None: fine)
        self._screened: dict[tuple[bool, frozenset[str]], str | None] = {}

    def check_columns(self, columns: Sequence[str], file: str) -> None:
        """Raises TemplateError, naming the template's file and line, when it uses a column the contact
        file (``file``, whose rows can have ``columns``: ``ContactReader.columns``) does not have."""
        for where, content, used in self._uses:
            unknown = sorted(used - {*columns, UNSUBSCRIBE_VARIABLE})
            if unknown:
                raise TemplateError(
                    f"{where}, line {_line_of(content, unknown[0])}: no contact has a value for "
                    f"{', '.join(unknown)}: {file} has no such column (its columns: {', '.join(columns)})"
                )

    def context(
        self, email: str, name: str, recipient: str | None = None, fields: dict[str, str] | None = None
    ) -> dict[str, str]:
        """The variables of one contact (``fields``: its other columns); an empty value is left out (a
        missing value). ``recipient``: where the message goes when it is not the contact (a test send):
        the unsubscribe link is theirs."""
        values = {**fields, "email": email} if fields else {"email": email}
        if name:
            values["name"] = name
        if self._needs_unsubscribe:
            values[UNSUBSCRIBE_VARIABLE] = unsubscribe_url(recipient or email, self.unsubscribe)
        return values

    def render(
        self, email: str, name: str, recipient: str | None = None, fields: dict[str, str] | None = None
    ) -> Rendered:
        """Raises RefusedMessage: a value the template needs is missing, or the subject holds a control
        character."""
        values = self.context(email, name, recipient, fields)
        try:
            subject = self._subject.render(values)
            text = self._text.render(values)
            html = self._html.render(values) if self._html is not None else None
        except jinja2.UndefinedError as exc:
            raise RefusedMessage(f"template {self.source.name}: missing value ({exc.message})") from None
        except jinja2.TemplateError as exc:  # a filter's or the sandbox's refusal, for this contact's values
            raise RefusedMessage(f"template {self.source.name}: {exc}") from None
        if not subject.isprintable():
            raise RefusedMessage(f"template {self.source.name}: the subject holds a line break or control character")
        return Rendered(subject, text, html)

    def refusal(self, contact: Contact) -> str | None:
        """Why this contact's message cannot be rendered (None: it can). The variables a contact has are
        its non-empty columns: the email always, the name and each field or not. The answer for one
        contact stands for the others with the same columns filled; a template whose need depends on a
        value's content (``{% if name == ... %}``) is refused per message at send time."""
        key = (bool(contact.name), frozenset(contact.fields or ()))
        if key not in self._screened:
            try:
                self.render(contact.email, contact.name, fields=contact.fields)
                self._screened[key] = None
            except RefusedMessage as exc:
                self._screened[key] = str(exc)
        return self._screened[key]

    def screen(self, contacts: list[Contact]) -> tuple[list[Contact], list[RejectedRow]]:
        """The contacts this template can be rendered for, and the others as rejected rows."""
        if not self.variables - {"email", UNSUBSCRIBE_VARIABLE} and not self.refusal(Contact("a@b.c", "", 0)):
            return contacts, []  # nothing a contact may lack: every contact is fine
        kept, rejected = [], []
        for contact in contacts:
            reason = self.refusal(contact)
            if reason is None:
                kept.append(contact)
            else:
                rejected.append(RejectedRow(contact.line_no, reason, f"{contact.name}, {contact.email}"))
        return kept, rejected

    def message(
        self, to: str, name: str, idempotency_key: str, fields: dict[str, str] | None = None
    ) -> OutgoingMessage:
        rendered = self.render(to, name, fields=fields)
        return OutgoingMessage(to, rendered.subject, rendered.text, idempotency_key, name, rendered.html)

    def messages(
        self, recipients: Sequence[tuple[str, str, str, dict[str, str] | None]]
    ) -> tuple[list[OutgoingMessage], dict[int, str]]:
        """(to, name, idempotency key, fields) -> the messages that could be rendered, and the refusals by
        position."""
        messages, refused = [], {}
        for n, (to, name, key, fields) in enumerate(recipients):
            try:
                messages.append(self.message(to, name, key, fields))
            except RefusedMessage as exc:
                refused[n] = str(exc)
        return messages, refused


_TEXT, _VALUE, _DEFAULT = "text", "value", "default"


def _segments(tree: nodes.Template) -> list[tuple[str, str, str]] | None:
    """A part made only of text, ``{{ variable }}`` and ``{{ variable | default("text") }}`` (most
    templates) as a list of segments; None for anything else (``if``, ``for``, other filters...)."""
    if not tree.body:
        return []
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    segments = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            segments.append((_TEXT, node.data, ""))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            segments.append((_VALUE, node.name, ""))
        elif (
            isinstance(node, nodes.Filter)
            and node.name in ("default", "d")
            and isinstance(node.node, nodes.Name)
            and len(node.args) == 1
            and isinstance(node.args[0], nodes.Const)
            and isinstance(node.args[0].value, str)
            and not node.kwargs
            and node.dyn_args is None
            and node.dyn_kwargs is None
        ):
            segments.append((_DEFAULT, node.node.name, node.args[0].value))
        else:
            return None
    return segments


@dataclass(frozen=True)
class _Part:
    """One file of a template, compiled. A part made of text and plain variables is rendered by joining
    its segments (about 1 us, where Jinja's render takes about 10 us: a million messages of three parts
    would spend half a minute in Jinja's machinery); the same text as Jinja's (tests compare them)."""

    template: jinja2.Template
    segments: list[tuple[str, str, str]] | None
    escaped: bool

    def render(self, values: dict[str, str]) -> str:
        if self.segments is None:
            return self.template.render(values)
        out = []
        for kind, text, fallback in self.segments:
            if kind is _TEXT:
                out.append(text)
                continue
            value = values.get(text)
            if value is None:
                if kind is _VALUE:
                    raise jinja2.UndefinedError(f"{text!r} is undefined")
                value = fallback
            out.append(escape(value) if self.escaped else value)
        return "".join(out)


class _Welcome(CompiledTemplate):
    """The built-in text, rendered by ``greeting.welcome_text``: the same bytes as its template (a test
    proves it), at the cost of an f-string: a million messages are not slowed by Jinja's machinery."""

    def render(
        self, email: str, name: str, recipient: str | None = None, fields: dict[str, str] | None = None
    ) -> Rendered:
        return Rendered(SUBJECT, welcome_text(name))

    def message(
        self, to: str, name: str, idempotency_key: str, fields: dict[str, str] | None = None
    ) -> OutgoingMessage:
        return OutgoingMessage(to, SUBJECT, welcome_text(name), idempotency_key, name)

    def screen(self, contacts: list[Contact]) -> tuple[list[Contact], list[RejectedRow]]:
        return contacts, []  # a contact without a name is greeted "Hi there"


_compiled: dict[tuple[str, str, UnsubscribeSettings], CompiledTemplate] = {}


def compile_template(source: TemplateSource, unsubscribe: UnsubscribeSettings | None = None) -> CompiledTemplate:
    """The template compiled and checked, once per process and content. Raises TemplateError."""
    unsubscribe = unsubscribe or UnsubscribeSettings()
    key = (source.name, source.hash, unsubscribe)
    if key not in _compiled:
        kind = _Welcome if source == WELCOME else CompiledTemplate
        _compiled[key] = kind(source, unsubscribe)
    return _compiled[key]


def _line_of(content: str, variable: str) -> int:
    """The first line that names ``variable`` (for the error message)."""
    word = re.compile(rf"\b{re.escape(variable)}\b")
    return next((n for n, line in enumerate(content.splitlines(), 1) if word.search(line)), 1)


def sample_values() -> dict[str, str]:
    """Values for a preview without a file: a row of the seed format (FIXED_COLUMNS)."""
    return {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0000",
        "street": "12 St James's Square",
        "city": "London",
        "state": "Greater London",
        "zip": "SW1Y 4JH",
    }


# -- one version per run --------------------------------------------------------------------------
def take_snapshot(engine: Engine, run_id: str, source: TemplateSource) -> TemplateSource:
    """Store the run's template at parse; the first snapshot of a run stands (a retried parse, a
    resend, a task of the run on another worker: all render the version the run started with).
    Returns the run's snapshot."""
    with engine.begin() as conn:
        values = {"run_id": run_id, "name": source.name, "hash": source.hash, "subject": source.subject}
        values |= {"text": source.text, "html": source.html, "origin": source.origin, "taken_at": utcnow()}
        insert = bulk.dialect_insert(conn, run_templates).values(**values)
        conn.execute(insert.on_conflict_do_nothing(index_elements=["run_id"]))
    snapshot = run_snapshot(engine, run_id)
    assert snapshot is not None
    return snapshot


def run_snapshot(engine: Engine, run_id: str) -> TemplateSource | None:
    """The template the run snapshot at parse (None: a run from before templates, or none yet)."""
    with engine.connect() as conn:
        row = conn.execute(select(run_templates).where(run_templates.c.run_id == run_id)).first()
    if row is None:
        return None
    source = TemplateSource(row.name, row.subject, row.text, row.html, origin=row.origin)
    if source.hash != row.hash:
        raise TemplateError(f"run {run_id}: the stored template {row.name} does not match its hash {row.hash}")
    return source


def for_run(engine: Engine, run_id: str, unsubscribe: UnsubscribeSettings | None = None) -> CompiledTemplate:
    """What the run's sends render: its snapshot, or the built-in text for a run without one."""
    return compile_template(run_snapshot(engine, run_id) or WELCOME, unsubscribe)
