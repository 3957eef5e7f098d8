"""The seeded companies, users and transactions; the same seed always gives the same data."""

from __future__ import annotations

import random

from local_rehive.model import COMPLETE, FAILED, PENDING, Currency, Leg, Movement, Transfer, User
from local_rehive.store import Store

DEMO_SERVICE_TOKEN = "local-demo-admin-token"  # noqa: S105 - a published fixture, not a secret
OTHER_SERVICE_TOKEN = "local-other-admin-token"  # noqa: S105 - a published fixture, not a secret
SEED_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: seeded history starts here
DAY_MS = 86_400_000

CURRENCIES = (
    Currency("USD", "United States dollar", "$", "dollar", 2),
    Currency("EUR", "Euro", "€", "euro", 2),
)
# (company, email, password, group, first name, last name); the admin owns its company.
PEOPLE = (
    ("demo", "admin@demo.test", "admin-pass-123", "admin", "Ada", "Admin"),
    ("demo", "alice@demo.test", "alice-pass-123", "user", "Alice", "Anderson"),
    ("demo", "bob@demo.test", "bob-pass-123", "user", "Bob", "Brown"),
    ("other", "mallory@other.test", "mallory-pass-123", "user", "Mallory", "Moriarty"),
)
SERVICES = (("demo", DEMO_SERVICE_TOKEN), ("other", OTHER_SERVICE_TOKEN))
# Company `other`'s admin, who can install services there. Created after everything else, with no
# history, so that every earlier seeded id, amount and account reference stays what it was.
OTHER_ADMIN = ("other", "admin@other.test", "admin-pass-123", "admin", "Olga", "Admin")
# Each person's history, oldest first: (tx_type, status, currency). Credits come first and are larger
# than any debit, so no balance ever goes negative.
HISTORY = (
    ("credit", COMPLETE, "USD"),
    ("credit", COMPLETE, "EUR"),
    ("debit", COMPLETE, "USD"),
    ("credit", PENDING, "USD"),
    ("debit", FAILED, "EUR"),
    ("credit", COMPLETE, "USD"),
    ("debit", PENDING, "USD"),
    ("debit", COMPLETE, "EUR"),
    ("credit", FAILED, "USD"),
    ("credit", PENDING, "EUR"),
    ("debit", FAILED, "USD"),
    ("credit", COMPLETE, "EUR"),
)
SUBTYPES = {"credit": ("deposit", "reward"), "debit": ("withdraw", "purchase")}
SEEDED_TRANSFER_AMOUNT = 2_500  # alice pays bob 25.00 USD, so the seed holds one partnered pair


def seed_store(store: Store, seed: int) -> None:
    """Fill `store` with the demo data; ids and amounts come from `seed`."""
    rng = random.Random(seed)
    with store.seeded_ids(seed):
        for company in ("demo", "other"):
            store.add_company(company, CURRENCIES)
        people = [_person(store, *row) for row in PEOPLE]
        for company, token in SERVICES:
            service = store.add_user(
                company, "service", first_name="Local", last_name="Service", at=SEED_EPOCH_MS
            )
            store.issue_token(service, None, token)
        for offset, person in enumerate(people):
            _history(store, rng, person, SEED_EPOCH_MS + offset * 30 * DAY_MS)
        alice, bob = people[1], people[2]
        store.transfer(
            "demo",
            people[0],
            Transfer(
                alice.id, bob.id, SEEDED_TRANSFER_AMOUNT, "USD", debit=Leg("transfer"), credit=Leg("transfer")
            ),
            at=SEED_EPOCH_MS + 200 * DAY_MS,
        )
        _person(store, *OTHER_ADMIN)


def _person(store: Store, company: str, email: str, password: str, group: str, first: str, last: str) -> User:
    return store.add_user(
        company,
        group,
        email=email,
        username=email.split("@")[0],
        first_name=first,
        last_name=last,
        password=password,
        owner=group == "admin",
        at=SEED_EPOCH_MS,
    )


def _history(store: Store, rng: random.Random, person: User, start: int) -> None:
    at = start
    for tx_type, status, currency in HISTORY:
        at += rng.randrange(DAY_MS // 4, 2 * DAY_MS)
        amount = rng.randrange(10_000, 50_000) if tx_type == "credit" else rng.randrange(100, 5_000)
        leg = Leg(subtype=rng.choice(SUBTYPES[tx_type]), note=f"seeded {tx_type}")
        movement = Movement(person.id, amount, currency, status, leg=leg)
        create = store.credit if tx_type == "credit" else store.debit
        create(person.company, person, movement, at=at)
