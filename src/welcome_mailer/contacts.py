"""Reading contact lists: decoding, CSV parsing, normalising and validating, in bounded chunks.

The seed format is ``name, email, phone, street, city, state, zip`` with no header and ", " between fields.
Real exports add a header row, quoted fields (names with commas), a BOM, CRLF, blank lines, short rows and
extra columns; they are all accepted. Every row ends up as exactly one of: a contact, a duplicate of an
earlier contact (same normalised email; the first name wins), or a rejected row with a line number and a
reason.

A contact is its name and email, plus the other columns a run's template uses (``fields``), and only
those: a file's columns are named by its header (``column_variable``: "Zip Code" is ``zip_code``), or,
without one, by the seed format (``FIXED_COLUMNS``). A run whose template uses no other column keeps
none (the common case, and a million rows' worth of dictionaries not built).

Pure Python: nothing here imports Airflow or touches a database.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

MAX_NAME_LENGTH = 100
MAX_EMAIL_LENGTH = 254
MAX_FIELD_LENGTH = 200  # any other column a template uses (a street, a city): cut like a name
# The columns of a file without a header, by position: the seed format.
FIXED_COLUMNS = ("name", "email", "phone", "street", "city", "state", "zip")
DEFAULT_CHUNK_SIZE = 50_000
_SNIFF_BYTES = 1 << 20
HEADER_EMAIL_NAMES = frozenset({"email", "e-mail", "email address", "e-mail address", "mail"})
HEADER_NAME_NAMES = frozenset({"name", "full name", "fullname", "contact", "contact name"})

# The common case, plain ASCII dot-atom addresses, is checked by this one expression (one C-level match a
# row); anything it does not accept goes through email-validator (about 17 us an address, too slow for every
# row of a large file). It leaves to email-validator what it refuses: '--' in a domain (reserved in a label's
# 3rd-4th place, as in 'xn--') and special-use domains (one of those names, or '.' and one at the end).
# tests/unit/test_contacts.py proves that every address accepted here is accepted by email-validator too.
_SPECIAL_USE_DOMAIN = "|".join(re.escape(name) for name in SPECIAL_USE_DOMAIN_NAMES)
_FAST_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    rf"@(?![^@]*--)(?!(?:[^@]*\.)?(?:{_SPECIAL_USE_DOMAIN})\Z)"
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_COLUMN_SEPARATORS = re.compile(r"[\s-]+")


@dataclass(slots=True)
class Contact:
    """Not frozen: a frozen dataclass's __init__ (object.__setattr__ per field) costs seconds a million contacts."""

    email: str
    name: str
    line_no: int
    fields: dict[str, str] | None = None  # the other columns the run's template uses, those with a value


@dataclass(frozen=True, slots=True)
class RejectedRow:
    line_no: int
    reason: str
    raw: str


@dataclass
class ParseStats:
    """What reading one file found. Every row read is counted in exactly one of the last three."""

    encoding: str = "utf-8"
    encoding_warning: str | None = None
    header_skipped: bool = False
    rows_read: int = 0
    contacts: int = 0
    duplicates_in_file: int = 0
    rejected: int = 0


@dataclass
class Chunk:
    contacts: list[Contact] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


class InvalidEmail(ValueError):
    pass


def normalise_email(raw: str) -> str:
    """Trim and lower-case an address and check its syntax (no DNS). Raises InvalidEmail."""
    email = raw.strip().lower()
    if not email:
        raise InvalidEmail("missing email")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail(f"email longer than {MAX_EMAIL_LENGTH} characters")
    if _FAST_EMAIL.fullmatch(email):
        return email
    try:
        return validate_email(email, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidEmail(f"invalid email: {exc}") from None


def normalise_name(raw: str, limit: int = MAX_NAME_LENGTH) -> str:
    """Control characters become spaces, white space folds to one space, trimmed, cut to ``limit``. Any
    other column a template uses is kept the same way (``MAX_FIELD_LENGTH``)."""
    if not raw.isprintable():  # most names are: no control character to replace
        raw = _CONTROL_CHARACTERS.sub(" ", raw)
    return " ".join(raw.split())[:limit].rstrip()


def column_variable(header: str) -> str:
    """A header cell as a template's variable: trimmed, lower-case, each run of spaces and hyphens one
    underscore ("Zip Code" and "zip-code": ``zip_code``)."""
    return _COLUMN_SEPARATORS.sub("_", header.strip().lower())


def encode_fields(fields: dict[str, str] | None) -> str | None:
    """A contact's fields as the ledger keeps them (JSON text; None: none)."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")) if fields else None


def decode_fields(stored: str | None) -> dict[str, str] | None:
    return json.loads(stored) if stored else None


def detect_encoding(path: Path) -> tuple[str, str | None]:
    """UTF-8 (with or without BOM) when the whole file decodes as UTF-8, else cp1252 with a warning."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        first = handle.read(_SNIFF_BYTES)
        encoding = "utf-8-sig" if first.startswith(codecs.BOM_UTF8) else "utf-8"
        block = first
        try:
            while block:
                decoder.decode(block)
                block = handle.read(_SNIFF_BYTES)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return "cp1252", f"file is not valid UTF-8 ({exc.reason} at byte {exc.start}); read as cp1252"
    return encoding, None


class ContactReader:
    """Streams a contact file as chunks of new contacts and rejected rows; ``stats`` fills as it goes.

    Memory stays bounded by the chunk size, plus one set of the normalised emails seen so far (needed to
    drop duplicates within the file; about 100 bytes a contact).
    """

    def __init__(self, path: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.stats = ParseStats()
        self._seen: set[str] = set()
        self._detected: tuple[str, str | None] | None = None
        self._wanted: tuple[str, ...] = ()  # the fields each contact keeps (chunks' argument) ...
        self._fields: list[tuple[str, int]] = []  # ... and their column numbers, those the file has

    def __iter__(self) -> Iterator[Chunk]:
        return self.chunks()

    def columns(self) -> tuple[str, ...]:
        """The variables this file's rows can have: ``name``, ``email`` and its other columns, named by its
        header (``column_variable``), or FIXED_COLUMNS without one. Reads the first record only."""
        with self._open() as handle:
            for row in csv.reader(handle, delimiter=",", skipinitialspace=True, strict=False):
                if row and not (len(row) == 1 and not row[0].strip()):
                    return tuple(_column_numbers(row))
        return FIXED_COLUMNS

    def chunks(self, fields: Sequence[str] = ()) -> Iterator[Chunk]:
        """The file's chunks; each contact keeps the ``fields`` (variables, as ``columns`` names them) it
        has a value for. A field the file has no column for is never a contact's."""
        self._wanted, self._fields = tuple(fields), []
        with self._open() as handle:
            yield from self._chunks(handle)

    @contextmanager
    def _open(self) -> Iterator[Iterator[str]]:
        if self._detected is None:
            self._detected = detect_encoding(self.path)
        self.stats.encoding, self.stats.encoding_warning = self._detected
        errors = "replace" if self.stats.encoding == "cp1252" else "strict"
        with self.path.open(encoding=self.stats.encoding, errors=errors, newline="") as handle:
            yield _without_nul(handle)

    def _chunks(self, text: io.TextIOBase | Iterator[str]) -> Iterator[Chunk]:
        reader = csv.reader(text, delimiter=",", skipinitialspace=True, strict=False)
        name_col, email_col = 0, 1
        first_record = True
        chunk = Chunk()
        last_line = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. a field over the csv module's size limit: reject and go on
                line_no, last_line = last_line + 1, reader.line_num
                self._reject(chunk, line_no, f"unreadable row: {exc}", "")
                continue
            line_no, last_line = last_line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line; a row of empty fields is rejected below for its missing email
            if first_record:
                first_record = False
                numbers = _column_numbers(row)
                self._fields = [(f, numbers[f]) for f in self._wanted if f in numbers]
                if _header_columns(row) is not None:
                    self.stats.header_skipped = True
                    name_col, email_col = numbers["name"], numbers["email"]
                    continue
            self._take(chunk, row, line_no, name_col, email_col)
            if len(chunk.contacts) + len(chunk.rejected) >= self.chunk_size:
                yield chunk
                chunk = Chunk()
        if chunk.contacts or chunk.rejected:
            yield chunk

    def _take(self, chunk: Chunk, row: list[str], line_no: int, name_col: int, email_col: int) -> None:
        self.stats.rows_read += 1
        if len(row) <= email_col:
            self._reject(chunk, line_no, "missing email column", row, counted=True)
            return
        try:
            email = normalise_email(row[email_col])
        except InvalidEmail as exc:
            self._reject(chunk, line_no, str(exc), row, counted=True)
            return
        if email in self._seen:
            self.stats.duplicates_in_file += 1
            return
        self._seen.add(email)
        self.stats.contacts += 1
        name = normalise_name(row[name_col]) if len(row) > name_col else ""
        if not self._fields:  # most templates: nothing more to keep (this is the path a million rows take)
            chunk.contacts.append(Contact(email, name, line_no))
            return
        values = ((f, normalise_name(row[n], MAX_FIELD_LENGTH)) for f, n in self._fields if n < len(row))
        chunk.contacts.append(Contact(email, name, line_no, {f: value for f, value in values if value} or None))

    def _reject(self, chunk: Chunk, line_no: int, reason: str, row: list[str] | str, counted: bool = False) -> None:
        if not counted:
            self.stats.rows_read += 1
        self.stats.rejected += 1
        raw = row if isinstance(row, str) else ", ".join(row)
        chunk.rejected.append(RejectedRow(line_no, reason, raw[:500]))


def _header_columns(row: list[str]) -> tuple[int, int] | None:
    """(name column, email column) when the row is a header, else None."""
    cells = [cell.strip().lower() for cell in row]
    if any("@" in cell for cell in cells):
        return None
    email_col = next((i for i, cell in enumerate(cells) if cell in HEADER_EMAIL_NAMES), None)
    if email_col is None:
        return None
    name_col = next((i for i, cell in enumerate(cells) if cell in HEADER_NAME_NAMES), 0)
    return name_col, email_col


def _column_numbers(first_row: list[str]) -> dict[str, int]:
    """variable -> column number, for a file whose first record is ``first_row``: its header's names
    (``name`` and ``email`` the columns the parser reads them from; of two columns of one name, the
    first), or FIXED_COLUMNS when it is a row of data."""
    header = _header_columns(first_row)
    if header is None:
        return {variable: n for n, variable in enumerate(FIXED_COLUMNS)}
    numbers = {"name": header[0], "email": header[1]}
    for n, cell in enumerate(first_row):
        variable = column_variable(cell)
        if variable:
            numbers.setdefault(variable, n)
    return numbers


def _without_nul(handle: io.TextIOBase) -> Iterator[str]:
    # The csv module refuses NUL characters; they are control characters, so they become spaces anyway.
    for line in handle:
        yield line.replace("\x00", " ") if "\x00" in line else line
