"""The whole flow over real HTTP: gunicorn serving the app, the local Rehive stand-in, loopback only."""

from __future__ import annotations

import json

import pytest
import requests

from devtools.processes import listening_socket, wait_for
from store import open_store
from tests.conftest import BACKENDS


def custom(service, token: str | None, **params) -> requests.Response:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return requests.get(f"{service.url}/custom/transactions/", params=params, headers=headers, timeout=15)


def inbox(url: str, event_id: str | None = None) -> list[dict]:
    """Read the service's inbox: every row, or the rows of one event id."""
    store = open_store(url, listen=False, pool_size=1)
    try:
        return store.get(event_id) if event_id else store.list_events()
    finally:
        store.shutdown()


def own_ids(stand_in, email: str) -> set[str]:
    """Return the ids of the transactions of `email` (company demo), as the stand-in knows them."""
    return {tx["id"] for tx in stand_in.control(f"transactions?company=demo&user={email}")}


def user_id(stand_in, email: str) -> str:
    return next(user["id"] for user in stand_in.control("users?company=demo") if user["email"] == email)


def test_a_user_logs_in_and_reads_their_transactions_through_the_service(start, stand_in):
    service = start()
    token = stand_in.login("alice@demo.test", "alice-pass-123")  # A

    response = custom(service, token, page_size="2")  # B
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["count"] >= 3 and len(data["results"]) == 2
    assert {tx["id"] for tx in data["results"]} <= own_ids(stand_in, "alice@demo.test")
    assert not any("user" in tx for tx in data["results"])  # the user-section shape
    assert data["next"].startswith(service.url + "/custom/transactions/?")
    assert "page=2" in data["next"] and "page_size=2" in data["next"]

    calls = stand_in.control("auth-calls")  # C: the stand-in saw her token, with her address
    assert any(call["user"] == "alice@demo.test" and call["forwarded_for"] == "127.0.0.1" for call in calls)

    following = requests.get(data["next"], headers={"Authorization": f"Token {token}"}, timeout=15)  # D
    assert following.status_code == 200
    assert {tx["id"] for tx in following.json()["data"]["results"]}.isdisjoint(
        tx["id"] for tx in data["results"]
    )


def test_a_user_never_sees_another_users_transactions(start, stand_in):
    service = start()
    alice = stand_in.login("alice@demo.test", "alice-pass-123")
    bob = stand_in.login("bob@demo.test", "bob-pass-123")
    assert custom(service, alice).status_code == 200
    alice_id = user_id(stand_in, "alice@demo.test")
    response = custom(service, bob, user=alice_id, page_size="250")
    assert response.status_code == 200
    seen = {tx["id"] for tx in response.json()["data"]["results"]}
    assert seen and seen <= own_ids(stand_in, "bob@demo.test")


def test_an_admin_may_list_everyone_and_another_company_is_refused(start, stand_in):
    service = start()
    admin = stand_in.login("admin@demo.test", "admin-pass-123")
    emails = {tx["user"]["email"] for tx in custom(service, admin, page_size="250").json()["data"]["results"]}
    assert {"alice@demo.test", "bob@demo.test"} <= emails
    mallory = stand_in.login("mallory@other.test", "mallory-pass-123", company="other")
    assert custom(service, mallory).status_code == 403


def test_logout_makes_the_token_useless_once_the_cache_expires(start, stand_in):
    service = start(AUTH_CACHE_SECONDS="1")
    token = stand_in.login("alice@demo.test", "alice-pass-123")
    assert custom(service, token).status_code == 200
    logout = requests.post(
        f"{stand_in.url}/3/auth/logout/", headers={"Authorization": f"Token {token}"}, timeout=10
    )
    assert logout.status_code == 200
    wait_for(lambda: custom(service, token).status_code == 401, timeout=10, what="the cached token to expire")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_credits_webhook_is_stored_and_processed_once_even_when_rehive_retries(
    start, stand_in, database_url, webhook_secret
):
    service = start(SAVINGS_PERCENT="10")
    port = service.extra["socket"].getsockname()[1]
    assert custom(service, stand_in.login("alice@demo.test", "alice-pass-123")).status_code == 200
    alice_id = user_id(stand_in, "alice@demo.test")

    # The service goes away; Rehive's deliveries fail and are retried with the same id.
    service.stop()
    service.extra["socket"].close()
    credit = stand_in.admin(
        "POST",
        "admin/transactions/credit/",
        json={"user": alice_id, "amount": 10_000, "currency": "USD", "status": "Complete"},
    ).json()["data"]

    def attempts() -> list[dict]:
        return [
            d
            for d in stand_in.control("deliveries")
            if d["event"] == "transaction.execute" and d["transaction"] == credit["id"]
        ]

    wait_for(lambda: len(attempts()) >= 2, timeout=20, what="two failed deliveries")
    restarted = start(register=False, sock=listening_socket(port), SAVINGS_PERCENT="10")
    wait_for(lambda: any(a["status"] == 202 for a in attempts()), timeout=30, what="a delivery to succeed")
    assert len({a["id"] for a in attempts()}) == 1  # the same id on every retry

    def savings_legs():
        accounts = stand_in.admin("GET", "admin/accounts/", params={"user": alice_id, "name": "savings"})
        results = accounts.json()["data"]["results"]
        if not results:
            return []
        txs = stand_in.admin("GET", "admin/transactions/", params={"account": results[0]["reference"]})
        return txs.json()["data"]["results"]

    legs = wait_for(savings_legs, timeout=20, what="the savings transfer")
    assert [leg["amount"] for leg in legs] == [1_000]

    # A retry after the acknowledgement (say it was lost on the way) changes nothing.
    envelope = {"id": attempts()[0]["id"], "event": "transaction.execute", "company": "demo", "data": credit}
    again = requests.post(
        f"{restarted.url}/webhooks/",
        data=json.dumps(envelope),
        headers={"Authorization": f"Secret {webhook_secret}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert again.status_code == 200
    assert len(inbox(database_url, envelope["id"])) == 1
    wait_for(lambda: all(row["status"] == "done" for row in inbox(database_url)), timeout=20)
    assert [leg["amount"] for leg in savings_legs()] == [1_000]


FAULTS = [
    pytest.param({"down": True}, 503, id="down"),
    pytest.param({"error_rate": 1.0}, 503, id="500s"),
    pytest.param({"latency_ms": 1500}, 504, id="slower than our timeout"),
    pytest.param({"throttle": True, "throttle_retry_after": 7}, 429, id="throttled"),
]


@pytest.mark.parametrize(("fault", "expected"), FAULTS)
def test_upstream_faults_give_the_documented_answers_and_the_service_recovers(
    start, stand_in, fault, expected
):
    service = start(AUTH_CACHE_SECONDS="0", REHIVE_TIMEOUT="0.5")
    token = stand_in.login("alice@demo.test", "alice-pass-123")
    assert custom(service, token).status_code == 200

    stand_in.control(**fault)
    response = custom(service, token)
    assert response.status_code == expected
    assert response.json()["status"] == "error"
    if expected == 429:
        assert response.headers["Retry-After"] == "7"

    stand_in.control("reset", reset=True)
    assert custom(service, token).status_code == 200
