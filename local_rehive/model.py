"""The records the stand-in keeps, and the Rehive vocabulary (groups, statuses, events) they use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# group name -> (label, section). Rehive does not document the section of `service`; "admin" is a guess.
GROUPS = {"admin": ("Admin", "admin"), "service": ("Service", "admin"), "user": ("User", "user")}
ADMIN_GROUPS = frozenset({"admin", "service"})

PENDING, COMPLETE, FAILED = "Pending", "Complete", "Failed"
STATUSES = (PENDING, COMPLETE, FAILED)
EXECUTED = frozenset({COMPLETE, FAILED})

# The events a webhook may subscribe to (rehive-api.md §4.3); only the transaction ones ever fire here.
EVENTS = frozenset(
    {
        "company.link.create",
        "company.link.update",
        "company.update",
        "currency.create",
        "currency.update",
        "user.create",
        "user.update",
        "user.password.reset",
        "user.password.set",
        "user.deactivate.verify",
        "user.request_delete.verify",
        "user.email.verify",
        "user.mobile.verify",
        "email.create",
        "email.update",
        "mobile.create",
        "mobile.update",
        "address.create",
        "address.update",
        "document.create",
        "document.update",
        "bank_account.create",
        "bank_account.update",
        "crypto_account.create",
        "crypto_account.update",
        "account.create",
        "account.update",
        "transaction.create",
        "transaction.update",
        "transaction.initiate",
        "transaction.execute",
        "transaction.transition.create",
        "transaction.transition.update",
        "mfa.sms.verify",
    }
)


def now_ms() -> int:
    """Return the time as Rehive writes it: integer milliseconds since the epoch."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Currency:
    """A currency of a company; amounts are integers in units of 10**-divisibility."""

    code: str
    description: str
    symbol: str
    unit: str
    divisibility: int


@dataclass
class User:
    """A platform user; `password_hash` is None for machine users, who cannot log in."""

    id: str
    company: str
    group: str
    email: str | None
    username: str | None
    first_name: str
    last_name: str
    password_hash: bytes | None
    owner: bool
    created: int
    updated: int
    mobile: str | None = None
    active: bool = True  # a deactivated user's tokens stop working (Rehive deactivates service users)

    @property
    def identifier(self) -> str:
        """Return what Rehive shows to other users: the email, else the username, else the id."""
        return self.email or self.username or self.id


@dataclass
class Account:
    """A user's account; it holds every currency of the company."""

    reference: str
    company: str
    user_id: str
    name: str
    label: str
    primary: bool
    currency_ids: dict[str, str]
    created: int
    updated: int


@dataclass
class Transaction:
    """One leg of money movement; debits carry negative amounts."""

    id: str
    company: str
    collection: str
    index: int
    user_id: str
    creator_id: str
    account: str
    currency: str
    tx_type: str
    amount: int
    status: str
    subtype: str | None
    note: str
    metadata: dict | None
    reference: str | None
    balance: int
    executed: int | None
    created: int
    updated: int
    seq: int
    partner_id: str | None = None
    archived: bool = False


@dataclass
class Service:
    """A company's private service (extension): where the platform calls it, and whether it is active."""

    id: int
    company: str
    slug: str
    name: str
    description: str | None
    tags: list[str]
    url: str
    management_url: str | None
    active: bool = False
    user_id: str | None = None  # the service-group user of the latest activation
    # That user's token, kept to post it to /deactivate/ as Rehive does; never rendered or logged.
    token: str | None = field(default=None, repr=False)


@dataclass
class Webhook:
    """A company's subscription of one URL to one event."""

    id: int
    company: str
    url: str
    event: str
    secret: str
    condition: str | None
    enabled: bool
    archived: bool
    created: int
    updated: int
    service: Service | None = None  # set when a service's user created it: locked while it is active


@dataclass(frozen=True)
class Token:
    """A session token (stored by its hash); `expires` None means it never expires."""

    user_id: str
    created: int
    expires: int | None


@dataclass(frozen=True)
class Leg:
    """What a caller may say about one leg of a transaction."""

    subtype: str | None = None
    note: str = ""
    metadata: dict | None = None
    reference: str | None = None


@dataclass(frozen=True)
class Movement:
    """A credit or debit to create: the parsed body of `/admin/transactions/credit|debit/`."""

    user: str | None
    amount: int
    currency: str
    status: str = COMPLETE
    account: str | None = None
    leg: Leg = field(default_factory=Leg)
    id: str | None = None


@dataclass(frozen=True)
class Transfer:
    """A transfer to create: the parsed body of `/admin/transactions/transfer/`."""

    user: str | None
    recipient: str
    amount: int
    currency: str
    status: str = COMPLETE
    debit_account: str | None = None
    credit_account: str | None = None
    debit: Leg = field(default_factory=Leg)
    credit: Leg = field(default_factory=Leg)
