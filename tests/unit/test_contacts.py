"""Parsing and normalising contact files."""

from __future__ import annotations

import string

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from welcome_mailer.contacts import (
    FIXED_COLUMNS,
    MAX_FIELD_LENGTH,
    MAX_NAME_LENGTH,
    ContactReader,
    InvalidEmail,
    column_variable,
    normalise_email,
    normalise_name,
)


def read(tmp_path, content: bytes | str, chunk_size: int = 50_000):
    path = tmp_path / "contacts.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    reader = ContactReader(path, chunk_size)
    chunks = list(reader)
    contacts = [c for chunk in chunks for c in chunk.contacts]
    rejected = [r for chunk in chunks for r in chunk.rejected]
    return contacts, rejected, reader.stats


def test_seed_format(tmp_path):
    contacts, rejected, stats = read(
        tmp_path, "David Smith, david.smith@example.com, 555-555-5555, 12345 Anywhere St, San Diego, CA, 92101\n"
    )
    assert [(c.email, c.name, c.line_no) for c in contacts] == [("david.smith@example.com", "David Smith", 1)]
    assert rejected == [] and stats.rows_read == 1 and not stats.header_skipped


def test_what_real_exports_add(tmp_path):
    content = (
        "\ufeffName,Email,Phone\r\n"
        '"Smith, David", David.Smith@Example.com , 555\r\n'
        "\r\n"
        "Zoë Müller, zoe@example.com\r\n"
        "Extra Cols, extra@example.com, 1, 2, 3, 4, 5, 6, 7, 8\r\n"
        "  Padded\t  Name , padded@example.com\r\n"
    )
    contacts, rejected, stats = read(tmp_path, content)
    assert stats.header_skipped and stats.encoding == "utf-8-sig" and stats.encoding_warning is None
    assert [(c.email, c.name, c.line_no) for c in contacts] == [
        ("david.smith@example.com", "Smith, David", 2),
        ("zoe@example.com", "Zoë Müller", 4),
        ("extra@example.com", "Extra Cols", 5),
        ("padded@example.com", "Padded Name", 6),
    ]
    assert rejected == []


def test_header_gives_the_column_order(tmp_path):
    contacts, _, stats = read(tmp_path, "email, full name\nann@example.com, Ann Lee\n")
    assert stats.header_skipped
    assert [(c.email, c.name) for c in contacts] == [("ann@example.com", "Ann Lee")]


def test_a_file_without_a_header_has_the_seed_formats_columns(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(
        "David Smith, david@example.com, 555-555-5555, 12345 Anywhere St, San Diego, CA, 92101\n"
        "Short Row, short@example.com, 555\n"
        "Blank City, blank@example.com, 1, 2 Main St,   \t , NY, 10001, extra\n"
    )
    reader = ContactReader(path)
    assert reader.columns() == FIXED_COLUMNS
    contacts = [c for chunk in reader.chunks(("city", "zip")) for c in chunk.contacts]
    assert [(c.email, c.fields) for c in contacts] == [
        ("david@example.com", {"city": "San Diego", "zip": "92101"}),
        ("short@example.com", None),  # neither column: no fields, a missing value for the template
        ("blank@example.com", {"zip": "10001"}),  # white space only is a missing value
    ]


def test_a_header_names_the_columns_and_only_the_asked_ones_are_kept(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(
        "\ufeffE-mail, Full Name, Zip Code, Company-Name, City, city\n"
        'ann@example.com, Ann, 10001, "Acme,\x07 Inc", Paris, Lyon\n'
        f"bob@example.com, Bob, {'9' * 300}\n"
    )
    reader = ContactReader(path)
    assert reader.columns() == ("name", "email", "e_mail", "full_name", "zip_code", "company_name", "city")
    contacts = [c for chunk in reader.chunks(("company_name", "city", "zip_code")) for c in chunk.contacts]
    assert [(c.email, c.name) for c in contacts] == [("ann@example.com", "Ann"), ("bob@example.com", "Bob")]
    # Normalised as names are (control characters, white space); the first of two columns of one name.
    assert contacts[0].fields == {"company_name": "Acme, Inc", "city": "Paris", "zip_code": "10001"}
    assert contacts[1].fields == {"zip_code": "9" * MAX_FIELD_LENGTH}
    assert all(c.fields is None for chunk in ContactReader(path) for c in chunk.contacts), "none asked, none kept"


@pytest.mark.parametrize(("header", "variable"), [
    ("Zip Code", "zip_code"), (" ZIP-code ", "zip_code"), ("first  name", "first_name"), ("e-mail", "e_mail"),
    ("city", "city"), ("Straße", "straße"),
])  # fmt: skip
def test_column_variable(header, variable):
    assert column_variable(header) == variable


def test_duplicates_keep_the_first_name_and_are_counted(tmp_path):
    content = "First, a@example.com\nSecond, A@EXAMPLE.COM\nThird,   a@example.com  \nOther, b@example.com\n"
    contacts, rejected, stats = read(tmp_path, content)
    assert [(c.email, c.name) for c in contacts] == [("a@example.com", "First"), ("b@example.com", "Other")]
    assert stats.duplicates_in_file == 2 and rejected == []


def test_bad_rows_are_rejected_with_line_and_reason_and_never_stop_the_file(tmp_path):
    content = "No Email Here\nBroken, not-an-email\n, , , ,\nOk, ok@example.com\nTwo Ats, a@b@example.com\n"
    contacts, rejected, stats = read(tmp_path, content)
    assert [c.email for c in contacts] == ["ok@example.com"]
    assert [(r.line_no, r.reason.split(":")[0]) for r in rejected] == [
        (1, "missing email column"),
        (2, "invalid email"),
        (3, "missing email"),
        (5, "invalid email"),
    ]
    assert stats.rows_read == 5 and stats.rejected == 4


def test_cp1252_file_is_read_with_a_warning(tmp_path):
    contacts, _, stats = read(tmp_path, "Jos\xe9 Garc\xeda, jose@example.com\n".encode("cp1252"))
    assert stats.encoding == "cp1252" and "not valid UTF-8" in stats.encoding_warning
    assert contacts[0].name == "José García"


def test_line_numbers_count_quoted_newlines(tmp_path):
    contacts, _, _ = read(tmp_path, '"Multi\nLine", multi@example.com\nNext, next@example.com\n')
    assert [(c.name, c.line_no) for c in contacts] == [("Multi Line", 1), ("Next", 3)]


def test_chunks_are_bounded(tmp_path):
    content = "".join(f"User {i}, user{i}@example.com\n" for i in range(25))
    path = tmp_path / "c.csv"
    path.write_text(content)
    sizes = [len(chunk.contacts) for chunk in ContactReader(path, chunk_size=10)]
    assert sizes == [10, 10, 5]


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("  Ann \t Lee ", "Ann Lee"),
        ("Ann\x00\x07Lee", "Ann Lee"),
        ("", ""),
        ("x" * 500, "x" * MAX_NAME_LENGTH),
        ("Ann\u0085Lee", "Ann Lee"),
    ],
)
def test_normalise_name(raw, name):
    assert normalise_name(raw) == name


@pytest.mark.parametrize(
    "raw", ["", "   ", "plain", "a@", "@example.com", "a@b@example.com", "a@localhost", "a@x.test"]
)
def test_invalid_emails(raw):
    with pytest.raises(InvalidEmail):
        normalise_email(raw)


@pytest.mark.parametrize("raw", ["ann@ab--cd.com", "ann@mail.xy--z.org"])
def test_reserved_double_dash_labels_are_refused_as_email_validator_does(raw):
    with pytest.raises(InvalidEmail):
        normalise_email(raw)


@pytest.mark.parametrize(
    "domain", ["local", "x.local", "localhost", "a.b.onion", "in-addr.arpa", "x.invalid", "test", "x.notlocal"]
)
@pytest.mark.parametrize("local_length", [1, 64, 65])
def test_special_use_domains_and_long_local_parts_are_judged_as_email_validator_does(domain, local_length):
    candidate = f"{'a' * local_length}@{domain}"
    try:
        theirs = validate_email(candidate, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        with pytest.raises(InvalidEmail):
            normalise_email(candidate)
    else:
        assert normalise_email(candidate) == theirs


def test_internationalised_email_goes_through_email_validator():
    assert normalise_email("  Zoë@Exämple.com ") == "zoë@exämple.com"


ascii_local = st.text(alphabet=string.ascii_letters + string.digits + ".!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=70)
ascii_domain = st.one_of(
    st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=30),
    st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}\.[a-z0-9-]{1,6}", fullmatch=True),
    st.from_regex(r"([a-z0-9]{1,5}\.)?[a-z]{2}--[a-z0-9]{1,8}\.[a-z]{2,4}", fullmatch=True),  # as in xn--
)


@given(local=ascii_local, domain=ascii_domain)
@settings(max_examples=2000)
def test_fast_path_accepts_only_what_email_validator_accepts(local, domain):
    candidate = f"{local}@{domain}".lower()
    try:
        ours = normalise_email(candidate)
    except InvalidEmail:
        return
    try:
        theirs = validate_email(candidate, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        pytest.fail(f"{candidate!r} accepted by the parser but refused by email-validator: {exc}")
    assert ours == theirs


@given(content=st.binary(max_size=2000))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_bytes_never_crash_and_every_row_is_accounted_for(tmp_path, content):
    contacts, rejected, stats = read(tmp_path, content)
    assert stats.rows_read == stats.contacts + stats.duplicates_in_file + stats.rejected
    assert len(contacts) == stats.contacts and len(rejected) == stats.rejected
    assert len({c.email for c in contacts}) == len(contacts)
    assert all(r.reason for r in rejected)


@given(rows=st.lists(st.tuples(st.text(max_size=30), st.text(max_size=40)), max_size=40))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_rows_are_accepted_or_rejected_with_a_reason(tmp_path, rows):
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    contacts, rejected, stats = read(tmp_path, buffer.getvalue())
    assert stats.rows_read == stats.contacts + stats.duplicates_in_file + stats.rejected
    assert all(c.email == c.email.strip().lower() and "@" in c.email for c in contacts)
    assert len(rejected) == stats.rejected and all(r.reason and r.line_no >= 1 for r in rejected)
