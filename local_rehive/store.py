"""All platform data of the stand-in, kept in memory behind one re-entrant lock."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import re
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from local_rehive.errors import ApiError, field_error
from local_rehive.model import (
    COMPLETE,
    EXECUTED,
    FAILED,
    PENDING,
    Account,
    Currency,
    Leg,
    Movement,
    Service,
    Token,
    Transaction,
    Transfer,
    User,
    Webhook,
    now_ms,
)

DEFAULT_SESSION_SECONDS = 10 * 3600  # Rehive's default token lifetime
LOGIN_FAILED = "Unable to log in with provided credentials."
DUPLICATE_WEBHOOK = "A webhook with the url and event already exists"
SERVICE_WEBHOOK_LOCKED = "Webhooks created by a service cannot be modified or deleted while it is active."

EventSink = Callable[[str, Transaction], None]


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _status_event(status: str) -> str | None:
    if status == PENDING:
        return "transaction.initiate"
    return "transaction.execute" if status in EXECUTED else None


class Store:
    """Companies, users, tokens, accounts, transactions and webhooks; every method takes `lock`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.currencies: dict[str, dict[str, Currency]] = {}
        self.users: dict[str, User] = {}
        self.accounts: dict[str, Account] = {}
        self.transactions: dict[str, Transaction] = {}
        self.webhooks: dict[int, Webhook] = {}
        self.services: dict[int, Service] = {}
        self.on_event: EventSink = lambda event, tx: None
        self._tokens: dict[bytes, Token] = {}
        self._settled: Counter[tuple[str, str]] = Counter()
        self._reserved: Counter[tuple[str, str]] = Counter()  # pending debits, <= 0
        self._ids: random.Random = random.SystemRandom()
        self._references = itertools.count(1)
        self._webhook_ids = itertools.count(1)
        self._service_ids = itertools.count(1)
        self._seq = itertools.count(1)

    # -- ids -------------------------------------------------------------------------------------

    @contextmanager
    def seeded_ids(self, seed: int) -> Iterator[None]:
        """Draw ids from `seed` inside the block, so that seeded data is the same on every run."""
        with self.lock:
            self._ids = random.Random(seed)
            try:
                yield
            finally:
                self._ids = random.SystemRandom()

    def new_id(self) -> str:
        """Return a fresh uuid4 string."""
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    # -- companies and users ---------------------------------------------------------------------

    def add_company(self, company: str, currencies: Iterable[Currency]) -> None:
        """Create a company holding `currencies` (the first is its default)."""
        with self.lock:
            self.currencies[company] = {currency.code: currency for currency in currencies}

    def add_user(
        self,
        company: str,
        group: str,
        *,
        email: str | None = None,
        username: str | None = None,
        first_name: str = "",
        last_name: str = "",
        password: str | None = None,
        owner: bool = False,
        at: int | None = None,
    ) -> User:
        """Create a user with a primary account named `default`."""
        at = at or now_ms()
        with self.lock:
            user = User(
                id=self.new_id(),
                company=company,
                group=group,
                email=email,
                username=username,
                first_name=first_name,
                last_name=last_name,
                password_hash=_hash(password) if password else None,
                owner=owner,
                created=at,
                updated=at,
            )
            self.users[user.id] = user
            self.create_account(user, "default", primary=True, at=at)
            return user

    def find_user(self, company: str | None, identifier: str) -> User | None:
        """Return the user of `company` (None: any) whose id, email, username or mobile is `identifier`."""
        wanted = identifier.strip().lower()
        with self.lock:
            for user in self.users.values():
                names = (user.id, user.email, user.username, user.mobile)
                if company in (None, user.company) and wanted in {name.lower() for name in names if name}:
                    return user
        return None

    def users_of(self, company: str | None) -> list[User]:
        """Return the users of `company`, or of every company."""
        with self.lock:
            return [user for user in self.users.values() if company in (None, user.company)]

    def _user_field(self, company: str, identifier: str | None, field: str) -> User:
        user = self.find_user(company, identifier) if identifier else None
        if user is None:
            raise field_error(field, f"Invalid {field}.")
        return user

    def _currency(self, company: str, code: str) -> Currency:
        currency = self.currencies[company].get(code.upper())
        if currency is None:
            raise field_error("currency", "Invalid currency.")
        return currency

    # -- tokens ----------------------------------------------------------------------------------

    def login(
        self, company: str, identifier: str, password: str, duration_s: float | None
    ) -> tuple[str, Token]:
        """Check a password login and return a new session token, or raise a 400."""
        user = self.find_user(company, identifier) if company in self.currencies else None
        given = _hash(password)
        if user is None or user.password_hash is None or not hmac.compare_digest(given, user.password_hash):
            raise ApiError(400, LOGIN_FAILED)
        if not user.active:
            raise ApiError(400, LOGIN_FAILED)
        return self.issue_token(user, duration_s or DEFAULT_SESSION_SECONDS)

    def issue_token(
        self, user: User, duration_s: float | None, token: str | None = None
    ) -> tuple[str, Token]:
        """Store a token for `user` (a new random one unless given); `duration_s` None never expires."""
        token = token or secrets.token_hex(32)
        created = now_ms()
        expires = None if duration_s is None else created + int(duration_s * 1000)
        record = Token(user.id, created, expires)
        with self.lock:
            self._tokens[_hash(token)] = record
        return token, record

    def user_for_token(self, token: str) -> User | None:
        """Return the owner of a live token, or None for an unknown, expired or revoked one."""
        with self.lock:
            record = self._tokens.get(_hash(token))
            if record is None:
                return None
            if record.expires is not None and record.expires <= now_ms():
                del self._tokens[_hash(token)]
                return None
            user = self.users[record.user_id]
            return user if user.active else None

    def revoke(self, token: str) -> None:
        """Make `token` stop working."""
        with self.lock:
            self._tokens.pop(_hash(token), None)

    # -- accounts --------------------------------------------------------------------------------

    def create_account(
        self, user: User, name: str, *, primary: bool = False, label: str | None = None, at: int | None = None
    ) -> Account:
        """Open an account for `user` in every currency of its company; `primary` demotes the old one."""
        at = at or now_ms()
        with self.lock:
            if primary:
                for account in self.accounts_of(user.company, user_id=user.id):
                    account.primary = False
            account = Account(
                reference=f"{next(self._references):010d}",
                company=user.company,
                user_id=user.id,
                name=name,
                label=label or name.replace("_", " ").title(),
                primary=primary,
                currency_ids={code: self.new_id() for code in self.currencies[user.company]},
                created=at,
                updated=at,
            )
            self.accounts[account.reference] = account
            return account

    def accounts_of(self, company: str, *, user_id: str | None = None) -> list[Account]:
        """Return the accounts of `company`, optionally only those of one user."""
        with self.lock:
            return [
                account
                for account in self.accounts.values()
                if account.company == company and user_id in (None, account.user_id)
            ]

    def account(self, company: str, reference: str) -> Account:
        """Return an account of `company` by reference, or raise a 404."""
        with self.lock:
            account = self.accounts.get(reference)
        if account is None or account.company != company:
            raise ApiError(404, "Not found.")
        return account

    def _account_field(self, user: User, reference: str | None, field: str) -> Account:
        with self.lock:
            if reference is None:
                return next(a for a in self.accounts_of(user.company, user_id=user.id) if a.primary)
            account = self.accounts.get(reference)
        if account is None or account.user_id != user.id:
            raise field_error(field, f"Invalid {field}.")
        return account

    def balances(self, reference: str, code: str) -> tuple[int, int]:
        """Return (balance, available balance) of an account in one currency."""
        key = (reference, code)
        with self.lock:
            return self._settled[key], self._settled[key] + self._reserved[key]

    def _require_funds(self, account: Account, code: str, amount: int) -> None:
        if self.balances(account.reference, code)[1] < amount:
            raise ApiError(400, "Insufficient balance.")

    # -- transactions ----------------------------------------------------------------------------

    def credit(
        self, company: str, creator: User, movement: Movement, *, at: int | None = None
    ) -> Transaction:
        """Create a credit and announce it."""
        return self._move(company, creator, movement, "credit", at)

    def debit(self, company: str, creator: User, movement: Movement, *, at: int | None = None) -> Transaction:
        """Create a debit (refused when the available balance is short) and announce it."""
        return self._move(company, creator, movement, "debit", at)

    def _move(
        self, company: str, creator: User, movement: Movement, tx_type: str, at: int | None
    ) -> Transaction:
        with self.lock:
            user = self._user_field(company, movement.user or creator.id, "user")
            currency = self._currency(company, movement.currency)
            account = self._account_field(user, movement.account, "account")
            if movement.id is not None and movement.id in self.transactions:
                raise field_error("id", "A transaction with this id already exists.")
            if tx_type == "debit" and movement.status != FAILED:
                self._require_funds(account, currency.code, movement.amount)
            tx = self._record(
                creator,
                account,
                currency,
                movement.amount if tx_type == "credit" else -movement.amount,
                movement.status,
                movement.leg,
                tx_id=movement.id,
                at=at,
            )
            self._announce(tx)
            return tx

    def transfer(
        self, company: str, creator: User, transfer: Transfer, *, at: int | None = None
    ) -> tuple[Transaction, Transaction]:
        """Create the debit and credit legs of a transfer, partnered, and announce both."""
        with self.lock:
            sender = self._user_field(company, transfer.user or creator.id, "user")
            recipient = self._user_field(company, transfer.recipient, "recipient")
            currency = self._currency(company, transfer.currency)
            source = self._account_field(sender, transfer.debit_account, "debit_account")
            target = self._account_field(recipient, transfer.credit_account, "credit_account")
            if source.reference == target.reference:
                raise field_error("credit_account", "Cannot transfer to the same account.")
            if transfer.status != FAILED:
                self._require_funds(source, currency.code, transfer.amount)
            status, amount = transfer.status, transfer.amount
            debit = self._record(creator, source, currency, -amount, status, transfer.debit, at=at)
            credit = self._record(
                creator, target, currency, amount, status, transfer.credit, collection=debit.collection, at=at
            )
            debit.partner_id, credit.partner_id = credit.id, debit.id
            self._announce(debit)
            self._announce(credit)
            return debit, credit

    def _record(
        self,
        creator: User,
        account: Account,
        currency: Currency,
        amount: int,
        status: str,
        leg: Leg,
        *,
        collection: str | None = None,
        tx_id: str | None = None,
        at: int | None = None,
    ) -> Transaction:
        """Insert one leg (the second leg of a collection passes the first one's `collection`)."""
        at = at or now_ms()
        tx = Transaction(
            id=tx_id or self.new_id(),
            company=account.company,
            collection=collection or self.new_id(),
            index=0 if collection is None else 1,
            user_id=account.user_id,
            creator_id=creator.id,
            account=account.reference,
            currency=currency.code,
            tx_type="credit" if amount > 0 else "debit",
            amount=amount,
            status="Initiating",
            subtype=leg.subtype,
            note=leg.note,
            metadata=leg.metadata,
            reference=leg.reference,
            balance=0,
            executed=None,
            created=at,
            updated=at,
            seq=next(self._seq),
        )
        self.transactions[tx.id] = tx
        self._set_status(tx, status, at)
        return tx

    def _set_status(self, tx: Transaction, status: str, at: int) -> None:
        """Move `tx` to `status`, keeping settled balances and pending-debit reservations right."""
        key = (tx.account, tx.currency)
        if tx.status == PENDING and tx.amount < 0:
            self._reserved[key] -= tx.amount
        if status == PENDING and tx.amount < 0:
            self._reserved[key] += tx.amount
        if status == COMPLETE:
            self._settled[key] += tx.amount
        if status in EXECUTED:
            tx.executed = at
        tx.status = status
        tx.balance = self._settled[key]
        tx.updated = at

    def _announce(self, tx: Transaction) -> None:
        self.on_event("transaction.create", tx)
        event = _status_event(tx.status)
        if event:
            self.on_event(event, tx)

    def transaction(self, company: str, tx_id: str) -> Transaction:
        """Return a transaction of `company`, or raise a 404."""
        with self.lock:
            tx = self.transactions.get(tx_id)
        if tx is None or tx.company != company:
            raise ApiError(404, "Not found.")
        return tx

    def transactions_of(self, company: str | None) -> list[Transaction]:
        """Return the transactions of `company` (or of all companies) in creation order."""
        with self.lock:
            return [tx for tx in self.transactions.values() if company in (None, tx.company)]

    def update_transaction(self, company: str, tx_id: str, status: str | None, edits: dict) -> Transaction:
        """Apply an admin PATCH; a status change moves the whole collection, as Rehive processes it."""
        with self.lock:
            tx = self.transaction(company, tx_id)
            at = now_ms()
            moved = self._change_status(tx, status, at) if status not in (None, tx.status) else []
            changed = {leg.id: leg for leg in moved}
            edits = {name: value for name, value in edits.items() if getattr(tx, name) != value}
            if edits:
                for name, value in edits.items():
                    setattr(tx, name, value)
                tx.updated = at
                changed[tx.id] = tx
            for leg in changed.values():
                self.on_event("transaction.update", leg)
            for leg in moved:
                event = _status_event(leg.status)
                if event:
                    self.on_event(event, leg)
            return tx

    def _change_status(self, tx: Transaction, status: str, at: int) -> list[Transaction]:
        if tx.status in EXECUTED:
            raise field_error("status", "Executed transactions cannot change status.")
        legs = [leg for leg in self.transactions.values() if leg.collection == tx.collection]
        for leg in legs:
            self._set_status(leg, status, at)
        return legs

    # -- webhooks --------------------------------------------------------------------------------

    def create_webhook(
        self,
        company: str,
        url: str,
        event: str,
        secret: str,
        condition: str | None,
        enabled: bool,
        creator: User | None = None,
    ) -> Webhook:
        """Subscribe `url` to `event`; one per (url, event) and company; a service's user ties it to it."""
        at = now_ms()
        with self.lock:
            self._refuse_duplicate(company, url, event, None)
            service = self.service_of_user(creator.id) if creator is not None else None
            webhook = Webhook(
                next(self._webhook_ids), company, url, event, secret, condition, enabled, False, at, at
            )
            webhook.service = service
            self.webhooks[webhook.id] = webhook
            return webhook

    def webhook(self, company: str, webhook_id: int) -> Webhook:
        """Return a webhook of `company`, or raise a 404."""
        with self.lock:
            webhook = self.webhooks.get(webhook_id)
        if webhook is None or webhook.company != company:
            raise ApiError(404, "Not found.")
        return webhook

    def update_webhook(self, company: str, webhook_id: int, changes: dict) -> Webhook:
        """Change some fields of a webhook (validated by the caller)."""
        with self.lock:
            webhook = self.webhook(company, webhook_id)
            _refuse_locked(webhook)
            url, event = changes.get("url", webhook.url), changes.get("event", webhook.event)
            self._refuse_duplicate(company, url, event, webhook.id)
            for name, value in changes.items():
                setattr(webhook, name, value)
            webhook.updated = now_ms()
            return webhook

    def delete_webhook(self, company: str, webhook_id: int) -> None:
        """Delete a webhook (refused for one tied to an active service)."""
        with self.lock:
            _refuse_locked(self.webhook(company, webhook_id))
            del self.webhooks[webhook_id]

    def webhooks_of(self, company: str) -> list[Webhook]:
        """Return the webhooks of `company`."""
        with self.lock:
            return [webhook for webhook in self.webhooks.values() if webhook.company == company]

    def subscribers(self, company: str, event: str) -> list[Webhook]:
        """Return the enabled, unarchived webhooks of `company` for `event`."""
        return [
            webhook
            for webhook in self.webhooks_of(company)
            if webhook.event == event and webhook.enabled and not webhook.archived
        ]

    def _refuse_duplicate(self, company: str, url: str, event: str, own_id: int | None) -> None:
        for webhook in self.webhooks_of(company):
            if webhook.id != own_id and (webhook.url, webhook.event) == (url, event):
                raise ApiError(400, DUPLICATE_WEBHOOK)

    # -- services --------------------------------------------------------------------------------

    def add_service(self, company: str, fields: dict) -> Service:
        """Register an inactive private service of `company`, with a slug unique in the company."""
        with self.lock:
            taken = {service.slug for service in self.services_of(company)}
            base = _slug(fields["name"])
            slug = next(
                candidate
                for n in itertools.count(1)
                if (candidate := base if n == 1 else f"{base}-{n}") not in taken
            )
            service = Service(id=next(self._service_ids), company=company, slug=slug, **fields)
            self.services[service.id] = service
            return service

    def service(self, company: str, service_id: int) -> Service:
        """Return a service of `company`, or raise a 404."""
        with self.lock:
            service = self.services.get(service_id)
        if service is None or service.company != company:
            raise ApiError(404, "Not found.")
        return service

    def services_of(self, company: str) -> list[Service]:
        """Return the services of `company`, oldest first."""
        with self.lock:
            return [service for service in self.services.values() if service.company == company]

    def service_of_user(self, user_id: str) -> Service | None:
        """Return the service whose activation created user `user_id`, if any."""
        with self.lock:
            return next((s for s in self.services.values() if s.user_id == user_id), None)

    def delete_service(self, company: str, service_id: int) -> None:
        """Forget an inactive service; its webhooks stay, no longer tied to it."""
        with self.lock:
            service = self.service(company, service_id)
            if service.active:
                raise ApiError(400, "Deactivate the service before deleting it.")
            for webhook in self.webhooks_of(company):
                if webhook.service is service:
                    webhook.service = None
            del self.services[service_id]


def _refuse_locked(webhook: Webhook) -> None:
    if webhook.service is not None and webhook.service.active:
        raise ApiError(400, SERVICE_WEBHOOK_LOCKED)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "service"
