"""Helpers of the tests of the provider's limits: runs claimed from generated files, and the busiest
window of a mock's acceptance timestamps."""

from __future__ import annotations

from welcome_mailer import pipeline


def busiest_window(timestamps: list[float], seconds: float = 1.0) -> int:
    """The most messages in any window [t, t + seconds) that starts at a message."""
    stamps, most, end = sorted(timestamps), 0, 0
    for start, stamp in enumerate(stamps):
        while end < len(stamps) and stamps[end] < stamp + seconds:
            end += 1
        most = max(most, end - start)
    return most


def claim_runs(ledger, tmp_path, runs: int, contacts: int, batches: int) -> dict[str, list[int]]:
    claimed = {}
    for n in range(runs):
        run_id = f"run{n}"
        path = tmp_path / f"{run_id}.csv"
        path.write_text("".join(f"User {i}, r{n}.user{i}@example.com\n" for i in range(contacts)))
        ledger.renew_lease(run_id)
        pipeline.parse_file(ledger, run_id, path, tmp_path / f"{run_id}-rejected.csv")
        claimed[run_id] = pipeline.claim_contacts(ledger, run_id, contacts // batches, batches)["batches"]
    return claimed
