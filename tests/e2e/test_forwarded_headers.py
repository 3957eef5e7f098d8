"""Over a real gunicorn: only TRUSTED_PROXIES decides which forwarded headers count, never gunicorn."""

from __future__ import annotations

import pytest
import requests


@pytest.mark.parametrize(
    "spoof",
    [
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-Ssl": "on"},
        {"X-Forwarded-Protocol": "ssl"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test", "Forwarded": "proto=https"},
    ],
    ids=["proto", "ssl", "protocol", "all"],
)
def test_forwarded_scheme_from_loopback_does_not_change_links_without_trusted_proxies(start, stand_in, spoof):
    service = start(register=False, TRUSTED_PROXIES="0")
    token = stand_in.login("alice@demo.test", "alice-pass-123")
    response = requests.get(
        f"{service.url}/custom/transactions/",
        params={"page_size": "1"},
        headers={"Authorization": f"Token {token}", **spoof},
        timeout=15,
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["data"]["next"].startswith(service.url + "/custom/transactions/?")
    assert service.url.startswith("http://127.0.0.1:")
