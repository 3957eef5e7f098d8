"""Multi-company mode over real HTTP: gunicorn in EXTENSION_MODE=multi, installed through the stand-in.

The stand-in does what Rehive does: PATCH /3/admin/services/<id>/ {"active": true} makes a service user
and POSTs its token to our /activate/; rotation and purge go through /_control/services/<id>/...
"""

from __future__ import annotations

import os

import pytest
import requests
from cryptography.fernet import Fernet

from devtools.processes import listening_socket, service_env, start_service, wait_for
from store import open_store
from tests.conftest import BACKENDS, both_backends

backend = pytest.fixture(params=BACKENDS)(both_backends)


@pytest.fixture
def multi_service(tmp_path, rehive, database_url):
    """gunicorn serving the app in multi mode against the stand-in, stopped after the test."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = service_env(
        os.environ,
        REHIVE_API_URL=rehive.url + "/3/",
        DATABASE_URL=database_url,
        EXTENSION_MODE="multi",
        TOKEN_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        PUBLIC_URL=url,
        WEBHOOK_RETRY_FIRST_SECONDS="0.2",
    )
    service = start_service(env, sock, log_path=tmp_path / "service.log", workers=2, threads=4)
    yield service
    service.stop()


def _as(token: str) -> dict:
    return {"Authorization": f"Token {token}"}


def _custom(service, token: str) -> requests.Response:
    return requests.get(f"{service.url}/custom/transactions/", headers=_as(token), timeout=15)


def _rows(database_url: str, company: str):
    store = open_store(database_url, listen=False, pool_size=1)
    try:
        return (
            store.registration(company),
            store.counts_of(company),
            store.company_setting(company, "savings_percent"),
        )
    finally:
        store.shutdown()


def test_a_company_installs_uses_rotates_deactivates_and_purges_the_extension(
    multi_service, rehive, stand_in, database_url
):
    service = multi_service
    api = rehive.url + "/3/"
    admin = stand_in.login("admin@demo.test", "admin-pass-123")
    alice = stand_in.login("alice@demo.test", "alice-pass-123")
    mallory = stand_in.login("mallory@other.test", "mallory-pass-123", company="other")
    assert _custom(service, alice).json()["message"] == "This company has not activated the extension."

    created = requests.post(
        api + "admin/services/", json={"name": "Savings", "url": service.url}, headers=_as(admin), timeout=15
    )
    assert created.status_code == 201, created.text
    service_id = created.json()["data"]["id"]
    activated = requests.patch(
        f"{api}admin/services/{service_id}/", json={"active": True}, headers=_as(admin), timeout=15
    )
    assert activated.status_code == 200, activated.text
    registration, _, _ = _rows(database_url, "demo")
    assert registration["active"] and registration["token_status"] == "ok"

    # A custom call uses demo's token; another company's user is still refused.
    response = _custom(service, alice)
    assert response.status_code == 200 and response.json()["data"]["results"]
    assert _custom(service, mallory).status_code == 403

    # A webhook for demo, verified with demo's secret, runs the handler with demo's token.
    store = open_store(database_url, listen=False, pool_size=1)
    store.set_company_setting("demo", "savings_percent", 10)
    store.shutdown()
    alice_id = next(
        u["id"] for u in stand_in.control("users?company=demo") if u["email"] == "alice@demo.test"
    )
    credit = stand_in.admin(
        "POST",
        "admin/transactions/credit/",
        json={"user": alice_id, "amount": 10_000, "currency": "USD", "status": "Complete"},
    ).json()["data"]

    def savings_legs():
        accounts = stand_in.admin("GET", "admin/accounts/", params={"user": alice_id, "name": "savings"})
        results = accounts.json()["data"]["results"]
        if not results:
            return []
        txs = stand_in.admin("GET", "admin/transactions/", params={"account": results[0]["reference"]})
        return txs.json()["data"]["results"]

    legs = wait_for(savings_legs, timeout=30, what="the savings transfer made with demo's token")
    assert [leg["amount"] for leg in legs] == [1_000]
    assert any(
        d["transaction"] == credit["id"] and d["status"] == 202 for d in stand_in.control("deliveries")
    )

    # Rotation: the new token replaces the old one, which the stand-in then revokes; calls go on.
    rotated = requests.post(f"{rehive.url}/_control/services/{service_id}/rotate", json={}, timeout=15).json()
    assert rotated["ok"] is True and rotated["status"] == 200
    assert _custom(service, alice).status_code == 200

    # Deactivation: refused again, the token is gone.
    deactivated = requests.patch(
        f"{api}admin/services/{service_id}/", json={"active": False}, headers=_as(admin), timeout=15
    )
    assert deactivated.status_code == 200
    registration, counts, _ = _rows(database_url, "demo")
    assert registration["active"] is False and registration["token"] is None
    assert counts  # its events are kept until a purge
    wait_for(lambda: _custom(service, alice).status_code == 403, timeout=10, what="demo refused")

    # Purge (Rehive deleting the company): activate again, then purge; no row of demo is left.
    again = requests.patch(
        f"{api}admin/services/{service_id}/", json={"active": True}, headers=_as(admin), timeout=15
    )
    assert again.status_code == 200, again.text
    purged = requests.post(f"{rehive.url}/_control/services/{service_id}/purge", json={}, timeout=15).json()
    assert purged["ok"] is True
    assert _rows(database_url, "demo") == (None, {}, None)
    assert "Traceback" not in service.log()
