"""The mock ESP's cheap address check never accepts what email-validator (its authority) refuses."""

from __future__ import annotations

import string

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from include.mocks.esp.app import _address_error, _is_plain_address

local_parts = st.text(alphabet=string.ascii_letters + string.digits + "._+-!#", min_size=1, max_size=70)
domains = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + ".-", min_size=1, max_size=30),
    st.from_regex(r"[a-zA-Z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}\.(com|test|local|[a-z0-9-]{1,6})", fullmatch=True),
)


@given(local=local_parts, domain=domains)
@settings(max_examples=3000)
def test_plain_addresses_are_a_subset_of_what_email_validator_accepts(local, domain):
    address = f"{local}@{domain}"
    if not _is_plain_address(address):
        return
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        pytest.fail(f"{address!r} passed the mock's plain check but email-validator refuses it: {exc}")


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("ann.lee@example.com", True),
        ("Ann+tag@Mail.Example.CO", True),
        ("zoë@exämple.com", True),  # not plain: email-validator decides
        ("ann..lee@example.com", False),
        (".ann@example.com", False),
        ("ann@-example.com", False),
        ("ann@example", False),
        ("ann@example.123", False),
        ("ann@localhost", False),
        ("ann@printer.local", False),
        ("ann lee@example.com", False),
        ("ann@ab--cd.com", False),
        ("ann@abc--d.com", True),
    ],
)
def test_the_mock_refuses_invalid_addresses(address, valid):
    assert (_address_error(address) is None) is valid
