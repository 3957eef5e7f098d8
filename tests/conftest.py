"""Fixtures: a fresh app per test on a temp database, and a strict mock of Rehive.

The store is SQLite unless a test module asks for `backend` over BACKENDS (see `both_backends`):
then it also runs on a fresh database of a real PostgreSQL cluster that this test session starts.
"""

from __future__ import annotations

import itertools

import pytest
import responses

import companies
from app import create_app
from devtools.postgres import Cluster, create_database, drop_database, start_cluster
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


BACKENDS = ("sqlite", "postgres")
_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster for the whole session (never skipped: installed by `make test`)."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(request) -> str:
    """The URL of a fresh, empty database of the session's cluster, dropped after the test."""
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    name = f"test_{next(_databases)}"
    url = create_database(cluster, name)
    yield url
    drop_database(cluster, name)


@pytest.fixture
def backend() -> str:
    """The store backend of this test's app (modules that run on both override it)."""
    return "sqlite"


def both_backends(request) -> str:
    """A `backend` fixture over both stores: `backend = pytest.fixture(params=BACKENDS)(both_backends)`."""
    return request.param


@pytest.fixture
def database_url(request, backend, tmp_path) -> str:
    """The DATABASE_URL of this test: a temp SQLite file, or a fresh Postgres database."""
    if backend == "postgres":
        return request.getfixturevalue("postgres_url")
    return "sqlite:///" + str(tmp_path / "inbox.sqlite3")


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(
        admin_token=ADMIN_TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        rehive_api_url=API,
        company=COMPANY,
        database_path=str(tmp_path / "inbox.sqlite3"),
        database_url=database_url,
        webhook_worker="off",
    )


@pytest.fixture
def apps():
    """Build apps with create_app; their stores are shut down after the test (pools, listeners)."""
    built = []

    def build(settings: Settings):
        app = create_app(settings)
        built.append(app)
        return app

    yield build
    for app in built:
        if "webhooks" in app.extensions:
            app.extensions["webhooks"].pool.stop()
        app.extensions["store"].shutdown()


@pytest.fixture
def app(settings, apps):
    return apps(settings)


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
