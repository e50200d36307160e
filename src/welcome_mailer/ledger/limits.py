"""The provider's limits, kept in the ledger's database so that every send task of every run (any worker,
any process) honours them together, with no process of their own to run.

- ``hand_back``: a throttled attempt was not sent: ``dispatched`` -> ``pending`` again, so the same
  attempt (same idempotency key, same Message-ID) is sent again later and never counts as a new one.
"""

from __future__ import annotations

from collections.abc import Sequence

from welcome_mailer.ledger.rules import DISPATCHED, PENDING, Ledger, OutgoingAttempt, move_attempts


def hand_back(ledger: Ledger, run_id: str, attempts: Sequence[OutgoingAttempt]) -> None:
    """The provider throttled these dispatched attempts (it said so: nothing went out): pending again, so
    they are sent again with the same key, and a crash before that cannot park them as unconfirmed."""
    if not attempts:
        return
    with ledger.engine.begin() as conn:
        move_attempts(conn, run_id, attempts, DISPATCHED, PENDING)
