"""The ledger's states, their strengths and the transitions between them: the rules of "at most one email
per contact". The state machine is written out once, in docs/ledger.md; each operation that moves a
contact or an attempt lives in the module of its concern (``claims``, ``attempts``, ``outcomes``,
``resends``, ``operator``), and every one of them is in this package.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from welcome_mailer.vocabulary import BLOCKED, BOUNCED, COMPLAINED, DELIVERED, STRENGTH

# Contact states
CLAIMED, SENDING, SENT, FAILED, UNCONFIRMED = "claimed", "sending", "sent", "failed", "unconfirmed"
UNSUBSCRIBED = "unsubscribed"  # the person's own one-click unsubscribe
SUPPRESSED = "suppressed"  # an operator's "never email this address"
IN_FLIGHT_STATES = (CLAIMED, SENDING, BLOCKED)
FINAL_STATES = (DELIVERED, BOUNCED, COMPLAINED, UNSUBSCRIBED, SUPPRESSED)
# The person's wish and the operator's decision outrank anything a provider reports about its messages.
CONTACT_STRENGTH = {**STRENGTH, UNSUBSCRIBED: max(STRENGTH.values()) + 1, SUPPRESSED: max(STRENGTH.values()) + 1}
UNSUBSCRIBE_OWNER = "unsubscribe"  # run_id of the rows of addresses unsubscribed before any run knew them
OPERATOR_RUN_ID = "operator"  # owns the rows an operator creates (suppressing an address never seen)
# A released failed contact: failed "long ago", so the next run that lists it retries it whatever its
# retry_failed_after_hours (claim's rule for failed contacts is unchanged).
RELEASED_AT = datetime(2000, 1, 1)
# Attempt states: pending (recorded, not confirmed accepted), then sent, then the provider's outcome;
# refused = the provider refused the address at once (the contact is closed as bounced); dispatched =
# handed to a transport without idempotency, reply not seen yet.
PENDING, DISPATCHED, REFUSED = "pending", "dispatched", "refused"
UNRECORDED_ATTEMPT_STATES = (PENDING, DISPATCHED)  # the provider's acceptance is not recorded
# A message the provider refused at once is as final as a bounced one.
ATTEMPT_STRENGTH = {**STRENGTH, REFUSED: STRENGTH[BOUNCED]}


def erased_hash(key: bytes, email: str) -> str:
    """The keyed hash an erased address is remembered by (HMAC-SHA256): without the key, nobody can test
    whether an address is among the erased."""
    return hmac.new(key, email.encode(), hashlib.sha256).hexdigest()


class ContactsTakenOver(RuntimeError):
    """A run was about to send attempts that another run has taken over (its lease expired)."""


class EraseKeyMissing(RuntimeError):
    """The ledger holds erased contacts, or an erase was asked for, and no erase key is configured."""


def already_applied(attempt_status: str, outcome: str) -> bool:
    """An event no stronger than what its recorded attempt already has was applied before, with its effect
    on the contact (in the same transaction): it changes nothing. Never for an attempt whose send is not
    recorded yet (its events wait in the inbox)."""
    if attempt_status in UNRECORDED_ATTEMPT_STATES:
        return False
    return STRENGTH[outcome] <= ATTEMPT_STRENGTH.get(attempt_status, 0)


def contact_follows(contact_status: str, contact_attempt: int, attempt: int, outcome: str) -> bool:
    """Whether a message's outcome changes its contact's state (see record_outcomes)."""
    if outcome == BLOCKED:  # an event only ever applies to an accepted attempt: sending means sent here
        return attempt == contact_attempt and contact_status in (SENDING, UNCONFIRMED)
    current = CONTACT_STRENGTH[contact_status] if contact_status in FINAL_STATES else 0
    return STRENGTH[outcome] > current
