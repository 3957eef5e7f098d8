"""Real nginx with deploy/nginx.conf in front of real gunicorn (TRUSTED_PROXIES=1), as in the README.

Clients connect from 127.0.0.2 and 127.0.0.3, so their address differs from nginx's own 127.0.0.1:
whatever the service decides by "the client's address" must be decided by theirs. The slow-client
demonstration (20 s) is the reliability suite's `proxy` row; these are the quick checks.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import requests

from reliability.nginx import find, start_proxy

CLIENT, STRANGER = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def proxy(start, tmp_path):
    """nginx serving deploy/nginx.conf over TLS, in front of gunicorn that trusts one proxy."""
    missing = [tool for tool in ("nginx", "openssl") if not find(tool)]
    if missing:
        message = (
            f"{' and '.join(missing)} missing: `make test` installs them (apt-get install -y nginx openssl)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    service = start(register=False, TRUSTED_PROXIES="1", WEBHOOK_ALLOWED_IPS=CLIENT)
    running = start_proxy(int(service.url.rsplit(":", 1)[1]), tmp_path / "nginx")
    yield running
    running.stop()


def auth_checks(rehive, user: str) -> list[dict]:
    """Return the stand-in's record of `GET /3/auth/` for `user` (the control API wants JSON, on loopback)."""
    response = requests.get(
        f"{rehive.url}/_control/auth-calls", headers={"Content-Type": "application/json"}, timeout=10
    )
    response.raise_for_status()
    return [
        call
        for call in response.json()
        if call["method"] == "GET" and call["path"] == "/3/auth/" and call["user"] == user
    ]


def deliver(proxy, webhook_secret: str, source: str, *extra: tuple[str, str]) -> int:
    """POST one new event through nginx from `source`; return the status."""
    body = json.dumps(
        {"id": str(uuid.uuid4()), "event": "transaction.create", "company": "demo", "data": {"id": "tx-1"}}
    ).encode()
    headers = [("Authorization", f"Secret {webhook_secret}"), ("Content-Type", "application/json"), *extra]
    return proxy.request("POST", "/webhooks/", headers, body, source=source).status


def test_behind_nginx_rehive_links_and_the_allow_list_see_the_client_not_the_proxy(
    proxy, rehive, stand_in, webhook_secret
):
    token = stand_in.login("alice@demo.test", "alice-pass-123")
    answer = proxy.request(
        "GET",
        "/custom/transactions/?page_size=1",
        [("Authorization", f"Token {token}"), ("X-Forwarded-For", "34.91.230.165")],  # a lie, dropped
        source=CLIENT,
    )

    assert answer.status == 200
    # Rehive judges the client's address: not nginx's 127.0.0.1, not the one the client wrote.
    assert [call["forwarded_for"] for call in auth_checks(rehive, "alice@demo.test")] == [CLIENT]
    # Links name the public https address the client used, not gunicorn's.
    assert json.loads(answer.body)["data"]["next"].startswith(
        f"https://public.example.test:{proxy.port}/custom/transactions/?"
    )
    # The allow-list judges the client's address too.
    assert deliver(proxy, webhook_secret, CLIENT) == 202
    assert deliver(proxy, webhook_secret, STRANGER) == 403
    assert deliver(proxy, webhook_secret, STRANGER, ("X-Forwarded-For", CLIENT)) == 403
    assert deliver(proxy, webhook_secret, "127.0.0.1") == 403  # nginx's own address is nobody's
