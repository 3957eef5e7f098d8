"""The example handler: move SAVINGS_PERCENT of every completed plain credit to the user's savings, once."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import current_app

from rehive_client import RehiveBadResponse, RehiveClient, RehiveRequestError
from webhooks.events import Event, derived_key
from webhooks.extension import webhooks_of

log = logging.getLogger("webhooks")

SAVINGS_ACCOUNT = "savings"
# Rehive's transaction ids are UUIDs; anything that could change the path (`/`, `..`, `?`) is refused.
_TRANSACTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


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


def savings_percent_for(company: str) -> int:
    """Return the company's savings percent: set on the manage page, else SAVINGS_PERCENT."""
    stored = webhooks_of().inbox.company_setting(company, "savings_percent")
    if isinstance(stored, int) and not isinstance(stored, bool):
        return stored
    return current_app.config["SETTINGS"].savings_percent


def savings_amount(amount: int, percent: int) -> int:
    """Return the share to save, in the smallest unit, rounded down."""
    return amount * percent // 100


def savings_reference(tx_id: str) -> str:
    """Return the reference both legs of the savings transfer for source transaction `tx_id` carry."""
    return f"savings:{tx_id}"


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


def _source_transaction(client: RehiveClient, tx_id: str) -> dict[str, Any] | None:
    """Return Rehive's own copy of the transaction, or None if Rehive has no such transaction."""
    try:
        body = client.get(f"admin/transactions/{tx_id}/")
    except RehiveRequestError as exc:
        if exc.status == 404:
            return None
        raise
    data = body.get("data")
    if not isinstance(data, dict) or data.get("id") != tx_id:
        raise RehiveBadResponse("Rehive's transaction detail is not the transaction asked for", body=body)
    return data


def _already_saved(client: RehiveClient, reference: str) -> bool:
    """Tell whether a transaction carrying our savings reference exists (a transfer made before)."""
    body = client.get("admin/transactions/", params={"reference": reference})
    # Check the reference ourselves: if the filter were ignored, any transaction would look like ours.
    return any(isinstance(tx, dict) and tx.get("reference") == reference for tx in _results(body))


def _is_plain_completed_credit(tx: dict[str, Any]) -> bool:
    if tx.get("tx_type") != "credit" or tx.get("status") != "Complete":
        return False
    # Either leg of a transfer (ours included) has a partner: saving it again would loop.
    return tx.get("partner") is None and tx.get("partner_id") is None


def auto_savings(event: Event, client: RehiveClient) -> None:
    """On `transaction.execute`, move a share of a completed plain credit to the savings account.

    The payload is only a hint: what is moved, from where and for whom comes from Rehive's own copy of
    the transaction, and the transfer is made once per source transaction, not once per delivery.
    """
    percent = savings_percent_for(event.company)
    hint = event.data
    # The hint may only spare a Rehive call for events that are no plain completed credit; it never
    # decides that money moves.
    if percent <= 0 or not _is_plain_completed_credit(hint):
        return
    tx_id = hint.get("id")
    if not isinstance(tx_id, str) or not _TRANSACTION_ID.fullmatch(tx_id):
        log.warning(
            "savings skipped company=%s id=%r: the event names no transaction", event.company, event.id
        )
        return
    tx = _source_transaction(client, tx_id)
    if tx is None:
        log.warning(
            "savings skipped company=%s id=%r tx=%s: Rehive has no such transaction",
            event.company,
            event.id,
            tx_id,
        )
        return
    if not _is_plain_completed_credit(tx):
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
            "savings skipped company=%s id=%r tx=%s: credit without user, account or currency",
            event.company,
            event.id,
            tx_id,
        )
        return

    savings = savings_account(client, event.company, user_id)
    if savings == account:
        return
    reference = savings_reference(tx_id)
    # Idempotency-Keys last 24 h and cover one key; the reference on Rehive's ledger lasts for ever and
    # also covers a second subscription, a replay or a re-sent event with a new id.
    if _already_saved(client, reference):
        log.info("savings already made company=%s id=%r tx=%s", event.company, event.id, tx_id)
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
            "debit_reference": reference,
            "credit_reference": reference,
        },
        idempotency_key=derived_key(event.company, tx_id, "savings-transfer"),
    )
    log.info(
        "savings moved company=%s id=%r tx=%s amount=%d currency=%s",
        event.company,
        event.id,
        tx_id,
        share,
        currency,
    )
