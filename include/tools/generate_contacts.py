"""Generate a contact list in the seed format, deterministically.

    python -m include.tools.generate_contacts --rows 10000 --seed 42 --output input.csv

About 10% of rows repeat an earlier contact (some with other case or padding of the email), a few rows are
malformed (no email, a broken address, a short row), some names are quoted because they hold a comma, and
some are not ASCII. The same arguments always write the same file.
"""

from __future__ import annotations

import argparse
import random
import unicodedata
from collections.abc import Iterator
from pathlib import Path

FIRST_NAMES = [
    "David", "Maria", "James", "Aiko", "Fatima", "Liam", "Olivia", "Noah", "Zoë", "José", "Chloé", "Björn",
    "Priya", "Wei", "Amara", "Mateo", "Sofía", "Ethan", "Hana", "Omar", "Grace", "Lucas", "Ingrid", "Kwame",
]  # fmt: skip
LAST_NAMES = [
    "Smith", "Garcia", "Johnson", "Tanaka", "Khan", "Brown", "Müller", "O'Brien", "Nguyen", "Rossi", "Silva",
    "Kowalski", "Novák", "Dubois", "Andersson", "Okafor", "Patel", "Chen", "Haddad", "Walker", "Løvland",
]  # fmt: skip
STREETS = ["Anywhere St", "Main St", "Oak Ave", "Pine Rd", "Elm Blvd", "Cedar Ln", "Maple Dr"]
CITIES = [("San Diego", "CA", "92101"), ("Austin", "TX", "73301"), ("Boston", "MA", "02108"), ("Denver", "CO", "80202")]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com"]
MALFORMED = [
    "Broken Row, not-an-email, 555-555-0000, 1 Nowhere St, Nowhere, NV, 89001",
    "No Email Here",
    "Missing Domain, someone@, 555-555-0001, 2 Nowhere St, Nowhere, NV, 89001",
    ", , , , , , ",
    "Two Ats, a@b@example.com, 555-555-0002, 3 Nowhere St, Nowhere, NV, 89001",
]


def _ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def generate_rows(rows: int, seed: int = 42, duplicate_rate: float = 0.1) -> Iterator[str]:
    rng = random.Random(seed)
    malformed_every = max(20, min(500, rows // 20))
    emitted: list[tuple[str, str, str]] = []  # (name, email, rest) of unique contacts written so far
    for index in range(rows):
        if index and index % malformed_every == 0:
            yield MALFORMED[(index // malformed_every) % len(MALFORMED)]
            continue
        if emitted and rng.random() < duplicate_rate:
            name, email, rest = emitted[rng.randrange(len(emitted))]
            variant = rng.randrange(3)
            if variant == 1:
                email = email.upper()
            elif variant == 2:
                email = f"  {email.title()} "
            yield f"{_name_field(name)}, {email}, {rest}"
            continue
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        name = f"{first} {last}" if rng.random() > 0.02 else f"{last}, {first}"
        email = f"{_ascii_slug(first)}.{_ascii_slug(last)}.{index}@{rng.choice(DOMAINS)}"
        city, state, zip_code = rng.choice(CITIES)
        phone = f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
        rest = f"{phone}, {rng.randrange(1, 99999)} {rng.choice(STREETS)}, {city}, {state}, {zip_code}"
        emitted.append((name, email, rest))
        yield f"{_name_field(name)}, {email}, {rest}"


def _name_field(name: str) -> str:
    return f'"{name}"' if "," in name else name


def write_file(path: Path, rows: int, seed: int = 42) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for line in generate_rows(rows, seed):
            handle.write(line + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=Path("input.csv"))
    args = parser.parse_args(argv)
    write_file(args.output, args.rows, args.seed)
    print(f"wrote {args.rows} rows to {args.output}")


if __name__ == "__main__":
    main()
