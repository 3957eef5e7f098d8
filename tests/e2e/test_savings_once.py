"""Auto-savings over real HTTP: once per credited transaction, decided on the stand-in's ledger."""

from __future__ import annotations

import json
import uuid

import requests

from devtools.processes import wait_for
from webhooks.inbox import Inbox


def _rows(path) -> list[dict]:
    store = Inbox(str(path))
    try:
        return store.list_events()
    finally:
        store.close()


def test_two_subscriptions_a_resent_forged_event_and_an_invented_credit_save_once(
    start, stand_in, tmp_path, webhook_secret
):
    service = start(SAVINGS_PERCENT="10", REHIVE_COMPANY="demo")
    # A second subscription of the same event (`/webhooks`, no slash): every credit arrives twice,
    # under two different ids.
    second = stand_in.admin(
        "POST",
        "admin/webhooks/",
        json={"url": service.url + "/webhooks", "event": "transaction.execute", "secret": webhook_secret},
    )
    assert second.status_code == 201
    alice_id = stand_in.admin("GET", "admin/transactions/", params={"page_size": "250"}).json()["data"]
    alice_id = next(
        tx["user"]["id"] for tx in alice_id["results"] if tx["user"]["email"] == "alice@demo.test"
    )

    credit = stand_in.admin(
        "POST",
        "admin/transactions/credit/",
        json={"user": alice_id, "amount": 10_000, "currency": "USD", "status": "Complete"},
    ).json()["data"]

    def deliver(event_id: str, data: dict) -> int:
        envelope = {"id": event_id, "event": "transaction.execute", "company": "demo", "data": data}
        response = requests.post(
            f"{service.url}/webhooks/",
            data=json.dumps(envelope),
            headers={"Authorization": f"Secret {webhook_secret}", "Content-Type": "application/json"},
            timeout=10,
        )
        return response.status_code

    # Someone with the secret re-sends the credit under a new id with a forged amount, and invents one.
    assert deliver("resent-1", {**credit, "amount": 5_000_000}) == 202
    invented = {**credit, "id": str(uuid.uuid4()), "amount": 7_000_000}
    assert deliver("invented-1", invented) == 202

    def execute_deliveries() -> list[dict]:
        return [
            d
            for d in stand_in.control("deliveries")
            if d["event"] == "transaction.execute" and d["transaction"] == credit["id"] and d["status"] == 202
        ]

    wait_for(lambda: len({d["id"] for d in execute_deliveries()}) == 2, timeout=30, what="both subscriptions")
    wait_for(
        lambda: (rows := _rows(tmp_path / "inbox.sqlite3")) and all(r["status"] == "done" for r in rows),
        timeout=30,
        what="every event to be done",
    )
    reference = f"savings:{credit['id']}"
    legs = stand_in.admin("GET", "admin/transactions/", params={"reference": reference}).json()["data"]
    assert sorted(leg["amount"] for leg in legs["results"]) == [
        -1_000,
        1_000,
    ]  # one transfer, Rehive's amount
    invented_legs = stand_in.admin(
        "GET", "admin/transactions/", params={"reference": f"savings:{invented['id']}"}
    ).json()["data"]
    assert invented_legs["count"] == 0
    savings = stand_in.admin("GET", "admin/accounts/", params={"user": alice_id, "name": "savings"}).json()
    [account] = savings["data"]["results"]
    saved = stand_in.admin("GET", "admin/transactions/", params={"account": account["reference"]}).json()
    assert [tx["amount"] for tx in saved["data"]["results"]] == [1_000]
    log = (tmp_path / "service.log").read_text()
    assert "Rehive has no such transaction" in log
