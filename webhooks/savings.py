"""The example handler: move SAVINGS_PERCENT of every completed plain credit to the user's savings."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app

from rehive_client import RehiveBadResponse, RehiveClient
from webhooks.events import Event, derived_key, idempotency_key
from webhooks.extension import webhooks_of

log = logging.getLogger("webhooks")

SAVINGS_ACCOUNT = "savings"


def _reference(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("reference")
    return value if isinstance(value, str) and value else None


def _account_name(tx: dict[str, Any]) -> str | None:
    account_currency = tx.get("account_currency")
    if isinstance(account_currency, dict) and isinstance(account_currency.get("account"), dict):
        return account_currency["account"].get("name")
    return None


def _currency_code(tx: dict[str, Any]) -> str | None:
    currency = tx.get("currency")
    code = currency.get("code") if isinstance(currency, dict) else currency
    return code if isinstance(code, str) and code else None


def _results(body: dict[str, Any]) -> list[Any]:
    data = body.get("data")
    if isinstance(data, dict):
        data = data.get("results")
    return data if isinstance(data, list) else []


def savings_amount(amount: int, percent: int) -> int:
    """Return the share to save, in the smallest unit, rounded down."""
    return amount * percent // 100


def savings_account(client: RehiveClient, company: str, user_id: str) -> str:
    """Return the reference of the user's savings account, creating it the first time."""
    body = client.get("admin/accounts/", params={"user": user_id, "name": SAVINGS_ACCOUNT})
    for account in _results(body):
        # Check the name ourselves: if the filter were ignored we would pick some other account.
        if isinstance(account, dict) and account.get("name") == SAVINGS_ACCOUNT and _reference(account):
            return _reference(account)  # type: ignore[return-value]
    # Keyed by the user, not the event: two first credits handled at once make one account.
    created = client.post(
        "admin/accounts/",
        {"user": user_id, "name": SAVINGS_ACCOUNT, "primary": False},
        idempotency_key=derived_key(company, user_id, "savings-account"),
    )
    data = created.get("data")
    reference = _reference(data)
    if reference is None:
        raise RehiveBadResponse("Rehive's new savings account has no reference", body=created)
    return reference


def savings_percent_for(company: str) -> int:
    """Return the company's savings percent: set on the manage page, else SAVINGS_PERCENT."""
    stored = webhooks_of().inbox.company_setting(company, "savings_percent")
    if isinstance(stored, int) and not isinstance(stored, bool):
        return stored
    return current_app.config["SETTINGS"].savings_percent


def auto_savings(event: Event, client: RehiveClient) -> None:
    """On `transaction.execute`, move a share of a completed plain credit to the savings account."""
    percent = savings_percent_for(event.company)
    tx = event.data
    if percent <= 0 or tx.get("tx_type") != "credit" or tx.get("status") != "Complete":
        return
    # Either leg of a transfer (ours included) has a partner: saving it again would loop.
    if tx.get("partner") is not None or tx.get("partner_id") is not None:
        return
    amount = tx.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return
    share = savings_amount(amount, percent)
    if share == 0 or _account_name(tx) == SAVINGS_ACCOUNT:
        return
    user = tx.get("user")
    user_id = user.get("id") if isinstance(user, dict) else user
    account = _reference(tx.get("account"))
    currency = _currency_code(tx)
    if not isinstance(user_id, str) or not user_id or account is None or currency is None:
        log.warning(
            "savings skipped company=%s id=%r: credit without user, account or currency",
            event.company,
            event.id,
        )
        return

    savings = savings_account(client, event.company, user_id)
    if savings == account:
        return
    client.post(
        "admin/transactions/transfer/",
        {
            "user": user_id,
            "recipient": user_id,
            "amount": share,
            "currency": currency,
            "debit_account": account,
            "credit_account": savings,
        },
        idempotency_key=idempotency_key(event, "savings-transfer"),
    )
    log.info("savings moved company=%s id=%r amount=%d currency=%s", event.company, event.id, share, currency)
