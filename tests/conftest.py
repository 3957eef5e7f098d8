"""Fixtures: a fresh app per test on a temp database, and a strict mock of Rehive."""

from __future__ import annotations

import pytest
import responses

import companies
from app import create_app
from settings import Settings

API = "https://rehive.test/3/"
ADMIN_TOKEN = "canary-admin-token-0123456789abcdef"
WEBHOOK_SECRET = "canary-webhook-secret-0123456789abcdef"
COMPANY = "acme"


@pytest.fixture(autouse=True)
def _admin_token_of_our_company(request, monkeypatch):
    """Take the admin token to belong to REHIVE_COMPANY without asking Rehive, unless the test is
    marked `company_check` (it then mocks `GET /3/auth/` with the admin token itself)."""
    if request.node.get_closest_marker("company_check"):
        return
    ask = companies.CompanyOfAdmin._ask_rehive

    def configured_or_ask(self):
        return self.configured if self.configured is not None else ask(self)

    monkeypatch.setattr(companies.CompanyOfAdmin, "_ask_rehive", configured_or_ask)


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


# -- webhooks -------------------------------------------------------------------------------------


def webhook_body(event_id=1, event="transaction.execute", company=COMPANY, data=None) -> dict:
    """Build a Rehive webhook delivery `{id, event, company, data}`."""
    return {"id": event_id, "event": event, "company": company, "data": {} if data is None else data}


@pytest.fixture
def post_webhook(client):
    """POST a delivery to /webhooks/ with our secret (or `secret=`, or None for no header)."""

    def post(body=None, *, secret=WEBHOOK_SECRET, path="/webhooks/", headers=None, **kwargs):
        all_headers = {"Authorization": f"Secret {secret}"} if secret is not None else {}
        all_headers.update(headers or {})
        if "data" not in kwargs:
            kwargs["json"] = webhook_body() if body is None else body
        return client.post(path, headers=all_headers, **kwargs)

    return post


@pytest.fixture
def inbox(app):
    """The app's webhook inbox."""
    from webhooks import webhooks_of

    return webhooks_of(app).inbox
