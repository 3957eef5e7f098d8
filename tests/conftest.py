"""Fixtures: a fresh app per test on a temp database, and a strict mock of Rehive."""

from __future__ import annotations

import pytest
import responses

from app import create_app
from settings import Settings

API = "https://rehive.test/3/"
ADMIN_TOKEN = "canary-admin-token-0123456789abcdef"
WEBHOOK_SECRET = "canary-webhook-secret-0123456789abcdef"
COMPANY = "acme"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        admin_token=ADMIN_TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        rehive_api_url=API,
        company=COMPANY,
        database_path=str(tmp_path / "inbox.sqlite3"),
        webhook_worker="off",
    )


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def rsps():
    """A strict Rehive mock: unexpected calls fail, and so do mocks left unused."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def rehive_user(user_id="u-alice", company=COMPANY, group="user", **extra) -> dict:
    """Build the `data` of a Rehive `GET /3/auth/` answer."""
    return {
        "id": user_id,
        "email": f"{user_id}@example.test",
        "company": company,
        "groups": [{"name": group, "label": group.title(), "section": "user"}],
        **extra,
    }
