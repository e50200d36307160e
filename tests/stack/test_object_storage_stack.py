"""A run on the Celery stack whose contact list is on object storage (a local S3 API), as with workers on
several hosts: no worker reads it from a shared disk. Proven from the ESP's log and the ledger."""

from __future__ import annotations

import pytest

from tests.stack.conftest import S3_ROOT
from tests.stack.helpers import assert_proven_from_outside, contact_file, run_and_wait

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def test_a_run_over_a_file_on_s3(stack):
    path = contact_file(stack, "s3", rows=1500, seed=41, domain="s3")
    bucket, _, prefix = S3_ROOT.removeprefix("s3://").partition("/")
    uri = stack.s3.upload(bucket, f"{prefix}/s3.csv", path)
    path.unlink()  # only the bucket has it now
    run_id, state = run_and_wait(stack, uri)
    assert state == "success", run_id
    path.write_bytes(stack.s3.read(bucket, f"{prefix}/s3.csv"))  # the expected contacts, from the object
    assert_proven_from_outside(stack, "s3", path)
