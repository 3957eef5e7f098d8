"""Render the stand-in's records as the JSON objects Rehive returns (rehive-api.md §1.3, §3.3, §4.5, §6)."""

from __future__ import annotations

from local_rehive.courier import Attempt, Task
from local_rehive.model import GROUPS, Account, Currency, Service, Transaction, User, Webhook
from local_rehive.store import Store


def currency(value: Currency) -> dict:
    """Render the reduced currency object found on transactions and users."""
    return {
        "code": value.code,
        "display_code": value.code,
        "description": value.description,
        "symbol": value.symbol,
        "unit": value.unit,
        "divisibility": value.divisibility,
        "icon": None,
    }


def groups(user: User) -> list[dict]:
    """Render a user's (single) group as Rehive's `groups` list."""
    label, section = GROUPS[user.group]
    return [{"name": user.group, "label": label, "section": section}]


def auth_user(store: Store, user: User) -> dict:
    """Render the `data` of `GET /3/auth/`."""
    with store.lock:
        account = next(a for a in store.accounts_of(user.company, user_id=user.id) if a.primary)
        default = next(iter(store.currencies[user.company].values()))
        balance, available = store.balances(account.reference, default.code)
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "mobile": user.mobile,
        "first_name": user.first_name,
        "middle_name": None,
        "last_name": user.last_name,
        "profile": None,
        "id_number": None,
        "birth_date": None,
        "language": "en",
        "nationality": None,
        "residency": None,
        "gender": None,
        "title": None,
        "timezone": None,
        "groups": groups(user),
        "temporary": False,
        "company": user.company,
        "owner": user.owner,
        "currency": currency(default),
        "account": account.reference,
        "balance": balance,
        "available_balance": available,
        "metadata": {},
        "verified": bool(user.email),
        "verification": {"email": bool(user.email), "mobile": False},
        "status": "verified",
        "settings": {
            "allow_transactions": True,
            "allow_debit_transactions": True,
            "allow_credit_transactions": True,
            "disallowed_transaction_subtypes": [],
        },
        "created": user.created,
        "updated": user.updated,
    }


def member(user: User) -> dict:
    """Render the `user` (and `creator`) object of an admin transaction or account."""
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "mobile": user.mobile,
        "first_name": user.first_name,
        "middle_name": None,
        "last_name": user.last_name,
        "profile": None,
        "groups": groups(user),
        "temporary": False,
    }


def _public_user(user: User) -> dict:
    return {
        "id": user.id,
        "identifier": user.identifier,
        "username": user.username,
        "first_name": user.first_name,
        "middle_name": None,
        "last_name": user.last_name,
        "profile": None,
        "temporary": False,
    }


def _partner(store: Store, tx: Transaction, *, admin: bool) -> dict | None:
    if tx.partner_id is None:
        return None
    partner = store.transactions[tx.partner_id]
    user = store.users[partner.user_id]
    if not admin:  # users see no email or mobile of their counterparty
        return {"id": partner.id, "user": _public_user(user)}
    return {
        "id": partner.id,
        "user": {**_public_user(user), "email": user.email, "mobile": user.mobile},
        "account": partner.account,
    }


def _common(store: Store, tx: Transaction, *, admin: bool) -> dict:
    account = store.accounts[tx.account]
    money = store.currencies[tx.company][tx.currency]
    return {
        "id": tx.id,
        "collection": tx.collection,
        "parent": None,
        "partner": _partner(store, tx, admin=admin),
        "tx_type": tx.tx_type,
        "subtype": tx.subtype,
        "note": tx.note,
        "metadata": tx.metadata,
        "status": tx.status,
        "reference": tx.reference,
        "amount": tx.amount,
        "fee": 0,
        "total_amount": tx.amount,
        "balance": tx.balance,
        "label": tx.tx_type.title(),
        "account": tx.account,
        "currency": currency(money),
        "account_currency": {
            "id": account.currency_ids[tx.currency],
            "account": {
                "reference": account.reference,
                "name": account.name,
                "label": account.label,
                "definition": None,
                "primary": account.primary,
            },
            "currency": currency(money),
        },
        "inclusive": False,
        "executed": tx.executed,
        "expires": None,
        "created": tx.created,
        "updated": tx.updated,
    }


def admin_transaction(store: Store, tx: Transaction, *, extended: bool = False) -> dict:
    """Render an admin list item, or with `extended` the retrieve/webhook object (adds `creator`)."""
    with store.lock:
        body = _common(store, tx, admin=True)
        body.update(index=tx.index, user=member(store.users[tx.user_id]), archived=tx.archived)
        if extended:
            body.update(creator=member(store.users[tx.creator_id]), fees=[])
        return body


def user_transaction(store: Store, tx: Transaction) -> dict:
    """Render a transaction as its owner sees it at `/3/transactions/`."""
    with store.lock:
        return _common(store, tx, admin=False)


def account(store: Store, value: Account) -> dict:
    """Render an admin account object with its balances per currency."""
    with store.lock:
        currencies = []
        for code, money in store.currencies[value.company].items():
            balance, available = store.balances(value.reference, code)
            currencies.append(
                {
                    "id": value.currency_ids[code],
                    "currency": currency(money),
                    "balance": balance,
                    "available_balance": available,
                    "active": True,
                }
            )
        return {
            "reference": value.reference,
            "name": value.name,
            "label": value.label,
            "primary": value.primary,
            "definition": None,
            "user": member(store.users[value.user_id]),
            "currencies": currencies,
            "archived": False,
            "created": value.created,
            "updated": value.updated,
        }


def webhook(value: Webhook) -> dict:
    """Render an admin webhook object."""
    return {
        "id": value.id,
        "url": value.url,
        "event": value.event,
        "secret": value.secret,
        "condition": value.condition,
        "enabled": value.enabled,
        "service": reduced_service(value.service) if value.service else None,
        "archived": value.archived,
        "created": value.created,
        "updated": value.updated,
    }


def service(value: Service) -> dict:
    """Render an admin service object (SPEC-A `AdminService`); the token is never part of it."""
    return {
        "id": value.id,
        "company": value.company,
        "slug": value.slug,
        "type": "private",
        "name": value.name,
        "description": value.description,
        "tags": list(value.tags),
        "verified": False,
        "public": False,
        "url": value.url,
        "management_url": value.management_url,
        "terms_and_conditions_url": None,
        "website_url": None,
        "active": value.active,
    }


def reduced_service(value: Service) -> dict:
    """Render the short service object found on webhooks and the company (SPEC-A `ReducedService`)."""
    return {"id": value.id, "slug": value.slug, "name": value.name, "url": value.url, "type": "private"}


def webhook_task(task: Task, hook: Webhook, *, extended: bool = False) -> dict:
    """Render a webhook task (a delivery's history); `extended` adds the payload, as the detail view does."""
    shape = {
        "id": task.id,
        "webhook": webhook(hook),  # secret included, as Rehive's admin API does
        "tries": task.tries,
        "completed": task.completed,
        "failed": task.failed,
        "archived": False,
        "created": task.created,
        "updated": task.updated,
    }
    if extended:
        shape["data"] = task.data
    return shape


def webhook_request(attempt: Attempt) -> dict:
    """Render one attempt of a webhook task."""
    return {
        "id": attempt.id,
        "response_code": attempt.response_code,
        "error": attempt.error,
        "archived": False,
        "created": attempt.created,
        "updated": attempt.created,
    }
