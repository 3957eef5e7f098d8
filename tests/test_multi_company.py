"""Multi-company mode: activation endpoints, per-company webhooks, requests and handlers, and no leaks."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
import responses
from cryptography.fernet import Fernet

from app import create_app
from companies import registry_of
from rehive_client import NoCompanyContext, admin
from settings import ConfigError, Settings, load_settings
from tests.conftest import API, BACKENDS, both_backends, rehive_user, webhook_body
from webhooks import webhooks_of
from webhooks.events import iso

KEY = Fernet.generate_key().decode()
PUBLIC_URL = "https://ext.example.test"
TOKEN_A = "canary-service-token-acme-0123456789"
TOKEN_B = "canary-service-token-beta-0123456789"
USER_A = "user-token-alice"
USER_B = "user-token-mallory"
EVENT = "transaction.execute"


class FakeRehive:
    """A small Rehive behind `responses`: tokens -> users, webhooks made, admin calls seen."""

    def __init__(self, mock: responses.RequestsMock) -> None:
        self.users = {
            TOKEN_A: rehive_user("svc-acme", company="acme", group="service"),
            TOKEN_B: rehive_user("svc-beta", company="beta", group="service"),
            USER_A: rehive_user("u-alice", company="acme"),
            USER_B: rehive_user("u-mallory", company="beta"),
        }
        self.refused: set[str] = set()
        self.webhooks: list[tuple[str, dict]] = []
        self.admin_calls: list[tuple[str, str]] = []  # (token, path)
        self.webhook_status = 201
        for method, path, callback in (
            ("GET", "auth/", self._auth),
            ("GET", "admin/company/", self._company),
            ("POST", "admin/webhooks/", self._webhook),
            ("GET", "admin/transactions/", self._transactions),
            ("GET", "admin/webhooks/", self._list_webhooks),
        ):
            mock.add_callback(method, API + path, callback=callback)
        mock.add_callback("PATCH", re.compile(re.escape(API) + r"admin/webhooks/\d+/"), callback=self._patch)
        self.patched: list[tuple[str, dict]] = []

    def _token(self, request) -> str:
        return request.headers["Authorization"].split()[1]

    def _user(self, request):
        token = self._token(request)
        if token in self.refused or token not in self.users:
            return None
        return self.users[token]

    @staticmethod
    def _answer(status: int, body: dict):
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    def _auth(self, request):
        user = self._user(request)
        if user is None:
            return self._answer(401, {"status": "error", "message": "Invalid token."})
        return self._answer(200, {"status": "success", "data": user})

    def _company(self, request):
        user = self._user(request)
        if user is None:
            return self._answer(401, {"status": "error", "message": "Invalid token."})
        return self._answer(200, {"status": "success", "data": {"id": user["company"]}})

    def _webhook(self, request):
        if self._user(request) is None:
            return self._answer(401, {"status": "error", "message": "Invalid token."})
        body = json.loads(request.body)
        if self.webhook_status != 201:
            return self._answer(self.webhook_status, {"status": "error", "message": "No permission."})
        if any(made == body for _, made in self.webhooks):
            return self._answer(
                400, {"status": "error", "message": "A webhook with the url and event already exists"}
            )
        self.webhooks.append((self._token(request), body))
        return self._answer(201, {"status": "success", "data": body})

    def _list_webhooks(self, request):
        company = self.users[self._token(request)]["company"]
        hooks = [
            {"id": n, **body}
            for n, (token, body) in enumerate(self.webhooks, start=1)
            if self.users[token]["company"] == company
        ]
        return self._answer(200, {"status": "success", "data": {"results": hooks}})

    def _patch(self, request):
        self.patched.append((urlsplit(request.url).path, json.loads(request.body)))
        return self._answer(200, {"status": "success", "data": {}})

    def _transactions(self, request):
        token = self._token(request)
        self.admin_calls.append((token, urlsplit(request.url).path))
        if self._user(request) is None:
            return self._answer(401, {"status": "error", "message": "Invalid token."})
        user = parse_qs(urlsplit(request.url).query).get("user", [""])[0]
        company = self.users[token]["company"]
        tx = {"id": f"tx-{company}", "user": {"id": user}}
        return self._answer(200, {"status": "success", "data": {"count": 1, "next": None, "results": [tx]}})


@pytest.fixture
def rehive():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeRehive(mock)


def multi_settings(database_url: str, **changes) -> Settings:
    return Settings(
        admin_token="",
        webhook_secret="",
        rehive_api_url=API,
        database_url=database_url,
        webhook_worker="off",
        extension_mode="multi",
        token_encryption_keys=(KEY,),
        public_url=PUBLIC_URL,
        webhook_events=(EVENT,),
    ).replace(**changes)


@pytest.fixture
def app(database_url, apps):
    return apps(multi_settings(database_url))


def _activate(client, token=TOKEN_A):
    return client.post("/activate/", json={"token": token})


def _secret_of(app, company: str) -> str:
    return registry_of(app).secrets_for(company)[0]


def _deliver(client, company, secret, event_id=1):
    body = webhook_body(event_id, EVENT, company, {"id": f"tx-{event_id}"})
    return client.post("/webhooks/", json=body, headers={"Authorization": f"Secret {secret}"})


# -- settings --------------------------------------------------------------------------------------


def _env(**extra):
    return {"EXTENSION_MODE": "multi", "TOKEN_ENCRYPTION_KEYS": KEY, "PUBLIC_URL": PUBLIC_URL, **extra}


def test_multi_mode_needs_keys_and_public_url_and_refuses_single_company_credentials():
    settings = load_settings(_env())
    assert settings.multi and settings.admin_token == "" and settings.public_url == PUBLIC_URL
    assert KEY not in repr(settings)
    for env, expected in (
        ({"TOKEN_ENCRYPTION_KEYS": ""}, "TOKEN_ENCRYPTION_KEYS is required"),
        ({"PUBLIC_URL": ""}, "PUBLIC_URL is required"),
        ({"REHIVE_ADMIN_TOKEN": "t"}, "REHIVE_ADMIN_TOKEN must not be set"),
        ({"REHIVE_COMPANY": "c"}, "REHIVE_COMPANY must not be set"),
        ({"REHIVE_WEBHOOK_SECRET": "s"}, "REHIVE_WEBHOOK_SECRET must not be set"),
        ({"EXTENSION_MODE": "many"}, "EXTENSION_MODE must be"),
    ):
        with pytest.raises(ConfigError, match=expected):
            load_settings(_env(**env))


def test_multi_mode_reconciles_the_url_activation_registers_unless_told_otherwise():
    assert load_settings(_env()).webhook_url == PUBLIC_URL.rstrip("/") + "/webhooks/"
    assert load_settings(_env(WEBHOOK_RECONCILE_MINUTES="5")).webhook_reconcile_minutes == 5
    elsewhere = "https://lb.test/webhooks/"
    assert load_settings(_env(WEBHOOK_URL=elsewhere)).webhook_url == elsewhere


def test_a_malformed_key_is_named_by_its_position_never_its_value():
    with pytest.raises(ConfigError) as raised:
        load_settings(_env(TOKEN_ENCRYPTION_KEYS=f"{KEY},canary-not-a-key-xyz"))
    assert "key #2" in str(raised.value)
    assert "canary-not-a-key-xyz" not in str(raised.value) and KEY not in str(raised.value)


def test_single_mode_has_no_activation_endpoints(settings, apps):
    client = apps(settings).test_client()
    for path in ("/activate/", "/deactivate/", "/rotate/"):
        response = client.post(path, json={"token": "x"})
        assert response.status_code == 404
        assert response.json["status"] == "error"


@pytest.mark.usefixtures("rehive")
def test_admin_outside_a_request_or_event_says_so(app):
    with app.app_context(), pytest.raises(NoCompanyContext, match="outside a request or a webhook event"):
        admin.get("admin/transactions/")


# -- /activate/, /deactivate/, /rotate/ ------------------------------------------------------------


def test_activation_stores_the_company_and_makes_its_webhooks(app, rehive):
    client = app.test_client()
    response = _activate(client)
    assert response.status_code == 201
    assert response.json == {"status": "success", "data": {"company": "acme"}}
    secret = _secret_of(app, "acme")
    assert len(secret) >= 43
    assert rehive.webhooks == [
        (TOKEN_A, {"url": PUBLIC_URL + "/webhooks/", "event": EVENT, "secret": secret})
    ]
    again = _activate(client)  # Rehive's "already exists" is fine; the secret is kept
    assert again.status_code == 200 and again.json["data"] == {"company": "acme"}
    assert _secret_of(app, "acme") == secret
    [registration] = registry_of(app).all()
    assert registration.public() == {
        "company": "acme",
        "active": True,
        "token_status": "ok",
        "activated_at": registration.activated_at,
        "deactivated_at": None,
        "webhook_events": [EVENT],
    }


BAD_BODIES = [
    ("not json", "text/plain", "must be JSON"),
    ("[1]", "application/json", "JSON object"),
    ("{}", "application/json", "'token' is required"),
    ('{"token": 5}', "application/json", "'token' must be a string"),
    ('{"token": null}', "application/json", "'token' must be a string"),
    ('{"token": ""}', "application/json", "is not a token"),
    ('{"token": "a b"}', "application/json", "is not a token"),
    ('{"token": "' + "x" * 600 + '"}', "application/json", "is not a token"),
]


@pytest.mark.parametrize("path", ["/activate/", "/deactivate/", "/rotate/"])
@pytest.mark.parametrize(("body", "content_type", "message"), BAD_BODIES)
def test_bad_bodies_are_400_and_store_nothing(app, rehive, path, body, content_type, message):
    response = app.test_client().post(path, data=body, content_type=content_type)
    assert response.status_code == 400
    assert message in response.json["message"]
    assert registry_of(app).all() == [] and rehive.webhooks == []


@pytest.mark.parametrize("purge", ["yes", 1, None, [], {}])
def test_a_purge_that_is_not_a_boolean_is_400(app, rehive, purge):
    _activate(app.test_client())
    response = app.test_client().post("/deactivate/", json={"token": TOKEN_A, "purge": purge})
    assert response.status_code == 400 and "'purge' must be true or false" in response.json["message"]
    assert registry_of(app).get("acme").active


def test_bad_tokens_are_refused_and_store_nothing(app, rehive, database_url, apps):
    rehive.users["canary-user-group"] = rehive_user("u-1", company="acme", group="user")
    client = app.test_client()
    for token, status, message in (
        ("unknown-token", 400, "Rehive did not accept the token."),
        ("canary-user-group", 400, "group 'service' or 'admin'"),
    ):
        for path in ("/activate/", "/deactivate/", "/rotate/"):
            response = client.post(path, json={"token": token})
            assert (response.status_code, response.json["message"]) == (status, message) or message in (
                response.json["message"]
            )
    assert registry_of(app).all() == [] and rehive.webhooks == []
    allowed_only = apps(multi_settings(database_url, activation_allowed_companies=frozenset({"beta"})))
    response = _activate(allowed_only.test_client())
    assert response.status_code == 403
    assert registry_of(app).all() == [] and rehive.webhooks == []


def test_a_webhook_rehive_refuses_fails_the_activation_and_leaves_no_registration(app, rehive):
    rehive.webhook_status = 403
    response = _activate(app.test_client())
    assert response.status_code == 502
    assert response.json["message"] == f"Rehive refused to create the webhook for {EVENT}."
    assert registry_of(app).all() == []


@pytest.mark.parametrize(
    ("failure", "status", "retry_after"),
    [
        (requests.exceptions.ReadTimeout("slow"), 504, None),
        (requests.exceptions.ConnectionError("down"), 503, "5"),
        ("throttled", 429, "7"),
    ],
)
def test_rehive_failing_during_activation_changes_nothing(database_url, apps, failure, status, retry_after):
    app = apps(multi_settings(database_url))
    with responses.RequestsMock() as mock:
        if failure == "throttled":
            mock.get(API + "auth/", status=429, json={"status": "error"}, headers={"Retry-After": "7"})
        else:
            mock.get(API + "auth/", body=failure)
        response = _activate(app.test_client())
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    assert registry_of(app).all() == []


def test_a_slower_rehive_than_the_budget_gives_504_and_changes_nothing(app, rehive, monkeypatch):
    import activation

    monkeypatch.setattr(activation, "BUDGET_SECONDS", 0.0)  # the budget spent before the first call
    response = _activate(app.test_client())
    assert response.status_code == 504
    assert registry_of(app).all() == []


def test_deactivate_rotate_and_purge(app, rehive):
    client = app.test_client()
    response = client.post("/deactivate/", json={"token": TOKEN_A})
    assert (response.status_code, response.json["message"]) == (400, "Company has not been activated.")
    response = client.post("/rotate/", json={"token": TOKEN_A})
    assert response.status_code == 400
    assert _activate(client).status_code == 201
    rehive.users["canary-rotated-token"] = rehive.users[TOKEN_A]
    assert client.post("/rotate/", json={"token": "canary-rotated-token"}).status_code == 200
    with app.test_request_context():
        assert registry_of(app).client("acme")._token == "canary-rotated-token"
    for _ in range(2):  # again: still 200
        response = client.post("/deactivate/", json={"token": TOKEN_A, "purge": False})
        assert response.status_code == 200
        assert not registry_of(app).get("acme").active
    assert client.post("/rotate/", json={"token": TOKEN_A}).status_code == 400
    webhooks_of(app).inbox.insert("acme", "e1", EVENT, "{}")
    webhooks_of(app).inbox.set_company_setting("acme", "savings_percent", 3)
    response = client.post("/deactivate/", json={"token": TOKEN_A, "purge": True})
    assert response.status_code == 200
    assert registry_of(app).get("acme") is None
    assert webhooks_of(app).inbox.counts_of("acme") == {}
    assert webhooks_of(app).inbox.company_setting("acme", "savings_percent") is None


# -- webhooks per company --------------------------------------------------------------------------


def test_each_company_has_its_own_secret_and_confusion_is_refused(app, rehive):
    client = app.test_client()
    _activate(client, TOKEN_A)
    _activate(client, TOKEN_B)
    secret_a, secret_b = _secret_of(app, "acme"), _secret_of(app, "beta")
    assert secret_a != secret_b
    assert _deliver(client, "acme", secret_a, 1).status_code == 202
    assert _deliver(client, "beta", secret_b, 1).status_code == 202
    assert _deliver(client, "acme", secret_a, 1).status_code == 200  # duplicate
    refused = [
        (_deliver(client, "beta", secret_a, 2), 401),  # A's secret for B's envelope
        (_deliver(client, "nobody", secret_a, 3), 403),  # a company that never activated
        (_deliver(client, "acme", "wrong", 4), 401),
        (client.post("/webhooks/", json=webhook_body(5, EVENT, "acme")), 401),  # no secret at all
    ]
    client.post("/deactivate/", json={"token": TOKEN_B})
    refused.append((_deliver(client, "beta", secret_b, 6), 403))  # an inactive company's secret
    client.post("/deactivate/", json={"token": TOKEN_A, "purge": True})
    refused.append((_deliver(client, "acme", secret_a, 7), 403))  # a purged company's secret
    for response, status in refused:
        assert response.status_code == status, response.json
    assert webhooks_of(app).inbox.counts_of("beta") == {"received": 1}
    assert webhooks_of(app).inbox.counts_of("acme") == {}


def test_the_previous_secret_is_accepted_only_for_its_grace(app, rehive):
    client = app.test_client()
    _activate(client)
    old = _secret_of(app, "acme")
    registry_of(app).rotate_secret("acme", "canary-new-secret-0123456789")
    assert _deliver(client, "acme", old, 1).status_code == 202
    assert _deliver(client, "acme", "canary-new-secret-0123456789", 2).status_code == 202
    # The grace is in the row: end it.
    registry = registry_of(app)
    row = registry.store.registration("acme")
    registry.store.set_secret("acme", row["secret"], row["previous_secret"], 0.0)
    registry.invalidate("acme")
    assert _deliver(client, "acme", old, 3).status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"x" * 2_000_000, 413), (b"{", 400), (b'{"id": 1}', 400)],
)
def test_size_type_json_and_fields_come_before_the_company(app, rehive, body, status):
    response = app.test_client().post("/webhooks/", data=body, content_type="application/json")
    assert response.status_code == status
    response = app.test_client().post("/webhooks/", data=b"{}", content_type="text/plain")
    assert response.status_code == 415


# -- custom endpoints and handlers use the company's token -----------------------------------------


def test_custom_calls_use_the_callers_company_token_and_need_it_active(app, rehive):
    client = app.test_client()
    response = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_A}"})
    assert response.status_code == 403
    assert response.json["message"] == "This company has not activated the extension."
    _activate(client, TOKEN_A)
    _activate(client, TOKEN_B)
    alice = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_A}"})
    mallory = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_B}"})
    assert alice.status_code == 200 and mallory.status_code == 200
    assert [tx["id"] for tx in alice.json["data"]["results"]] == ["tx-acme"]
    assert [tx["id"] for tx in mallory.json["data"]["results"]] == ["tx-beta"]
    assert [token for token, _ in rehive.admin_calls] == [TOKEN_A, TOKEN_B]
    client.post("/deactivate/", json={"token": TOKEN_B})
    again = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_B}"})
    assert again.status_code == 403


def test_a_token_rehive_refuses_marks_the_company_until_rotated(app, rehive, caplog):
    client = app.test_client()
    _activate(client, TOKEN_A)
    rehive.refused.add(TOKEN_A)
    with caplog.at_level(logging.INFO):
        first = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_A}"})
    assert first.status_code == 502
    assert registry_of(app).get("acme").token_status == "token_invalid"
    assert "company acme" in caplog.text and TOKEN_A not in caplog.text
    response = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_A}"})
    assert (response.status_code, response.json["message"]) == (502, "The service is misconfigured.")
    rehive.users["canary-rotated-token"] = rehive.users[TOKEN_A]
    assert client.post("/rotate/", json={"token": "canary-rotated-token"}).status_code == 200
    response = client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_A}"})
    assert response.status_code == 200


def test_handlers_get_the_event_companys_client_and_inactive_companies_events_wait(app, rehive):
    client = app.test_client()
    state = webhooks_of(app)
    seen = []

    def record(event, rehive_client):
        seen.append((event.company, rehive_client._token, admin.client()._token))

    state.registry.on(EVENT)(record)
    _activate(client, TOKEN_A)
    _activate(client, TOKEN_B)
    assert _deliver(client, "acme", _secret_of(app, "acme"), 1).status_code == 202
    assert _deliver(client, "beta", _secret_of(app, "beta"), 1).status_code == 202
    client.post("/deactivate/", json={"token": TOKEN_B})
    state.pool.drain()
    assert seen == [("acme", TOKEN_A, TOKEN_A)]
    assert state.inbox.counts_of("beta") == {"received": 1}  # waits: neither run nor dead
    _activate(client, TOKEN_B)
    state.pool.drain()
    assert seen[1:] == [("beta", TOKEN_B, TOKEN_B)]
    assert state.inbox.counts_of("beta") == {"done": 1}


# -- nothing in plaintext ------------------------------------------------------------------------


backend = pytest.fixture(params=BACKENDS)(both_backends)


def test_no_token_or_secret_in_answers_logs_or_database_bytes(app, rehive, database_url, caplog, tmp_path):
    client = app.test_client()
    answers = []
    with caplog.at_level(logging.DEBUG):
        answers.append(_activate(client, TOKEN_A).get_data())
        answers.append(_activate(client, TOKEN_A).get_data())
        secret = _secret_of(app, "acme")
        answers.append(_deliver(client, "acme", secret).get_data())
        answers.append(client.post("/rotate/", json={"token": TOKEN_A}).get_data())
        answers.append(
            client.get("/custom/transactions/", headers={"Authorization": f"Token {USER_A}"}).get_data()
        )
    canaries = (TOKEN_A, secret)
    for canary in canaries:
        assert all(canary.encode() not in answer for answer in answers)
        assert canary not in caplog.text
    if database_url.startswith("sqlite:"):
        path = database_url[len("sqlite:///") :]
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(FULL)")
        data = b"".join(Path(path + suffix).read_bytes() for suffix in ("", "-wal") if _exists(path + suffix))
    else:
        with psycopg.connect(database_url) as conn:
            data = repr(conn.execute("SELECT * FROM company_registrations").fetchall()).encode()
    assert b"acme" in data
    for canary in canaries:
        assert canary.encode() not in data


def _exists(path: str) -> bool:
    return Path(path).exists()


def test_a_second_app_on_the_same_store_sees_the_registration(app, rehive, database_url, apps):
    _activate(app.test_client())
    other = apps(multi_settings(database_url))
    assert registry_of(other).get("acme").active
    assert create_app  # the same factory gunicorn uses


# -- the CLI ---------------------------------------------------------------------------------------


def test_the_cli_lists_shows_sets_rotates_and_deactivates_without_printing_secrets(app, rehive):
    client = app.test_client()
    _activate(client, TOKEN_A)
    _activate(client, TOKEN_B)
    old_secret = _secret_of(app, "acme")
    runner = app.test_cli_runner()
    outputs = []

    def run(*args):
        result = runner.invoke(args=["companies", *args])
        outputs.append(result.output + str(result.exception or ""))
        return result

    listed = run("list", "--json")
    assert listed.exit_code == 0
    assert [row["company"] for row in json.loads(listed.output)] == ["acme", "beta"]
    assert "acme" in run("list").output
    assert run("set", "acme", "savings_percent=12").exit_code == 0
    assert json.loads(run("show", "acme").output)["savings_percent"] == 12
    assert run("set", "acme", "savings_percent=101").exit_code != 0
    assert run("set", "acme", "colour=red").exit_code != 0
    assert run("show", "nobody").exit_code != 0
    rotated = run("rotate-secret", "acme")
    assert rotated.exit_code == 0, rotated.output
    new_secret = _secret_of(app, "acme")
    assert new_secret != old_secret
    assert rehive.patched == [("/3/admin/webhooks/1/", {"secret": new_secret})]
    assert _deliver(client, "acme", old_secret, 1).status_code == 202  # within the grace
    assert _deliver(client, "acme", new_secret, 2).status_code == 202
    assert run("rotate-keys").output.startswith("Re-encrypted 2 registration(s)")
    assert _secret_of(app, "acme") == new_secret
    assert run("deactivate", "beta").exit_code == 0
    assert not registry_of(app).get("beta").active
    assert run("deactivate", "acme", "--purge").exit_code == 0
    assert registry_of(app).get("acme") is None
    text = "\n".join(outputs)
    for canary in (TOKEN_A, TOKEN_B, old_secret, new_secret, KEY):
        assert canary not in text


def test_rotate_keys_moves_every_ciphertext_to_the_first_key(app, rehive, database_url, apps):
    _activate(app.test_client())
    secret = _secret_of(app, "acme")
    new_key = Fernet.generate_key().decode()
    rotated = apps(multi_settings(database_url, token_encryption_keys=(new_key, KEY)))
    assert rotated.test_cli_runner().invoke(args=["companies", "rotate-keys"]).exit_code == 0
    only_new = apps(multi_settings(database_url, token_encryption_keys=(new_key,)))
    assert registry_of(only_new).secrets_for("acme") == (secret,)
    with only_new.test_request_context():
        assert registry_of(only_new).client("acme")._token == TOKEN_A


# -- plug-ins: metrics, manage status, the worker's waiting, single mode's scope -------------------


def test_metrics_count_companies_by_state_and_manage_status_says_multi(app, rehive):
    client = app.test_client()
    _activate(client, TOKEN_A)
    _activate(client, TOKEN_B)
    client.post("/deactivate/", json={"token": TOKEN_B})
    rehive.users["admin-of-acme"] = rehive_user("u-admin", company="acme", group="admin")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'companies{state="active"} 1.0' in text and 'companies{state="inactive"} 1.0' in text
    status = client.get("/manage/api/status/", headers={"Authorization": "Token admin-of-acme"})
    assert status.status_code == 200, status.json
    assert status.json["data"]["mode"] == "multi"
    assert status.json["data"]["active_since"] == iso(registry_of(app).get("acme").activated_at)
    for canary in (TOKEN_A, TOKEN_B, _secret_of(app, "acme")):
        assert canary not in text and canary not in status.get_data(as_text=True)


def test_a_handler_meeting_a_refused_token_marks_it_and_its_events_wait_until_rotated(app, rehive):
    client = app.test_client()
    state = webhooks_of(app)
    runs = []

    def list_transactions(event, rehive_client):
        runs.append(event.id)
        rehive_client.get("admin/transactions/")

    state.registry.on(EVENT)(list_transactions)
    _activate(client, TOKEN_A)
    rehive.refused.add(TOKEN_A)
    assert _deliver(client, "acme", _secret_of(app, "acme"), 1).status_code == 202
    state.pool.drain()
    assert runs == ["1"]
    assert registry_of(app).get("acme").token_status == "token_invalid"
    [row] = state.inbox.get("1", "acme")
    assert (row["status"], row["attempts"]) == ("failed", 0)  # not counted, never dead
    state.inbox.replay("acme", "1")  # due now, yet it waits for the company
    assert state.pool.drain() == 0
    rehive.users["canary-rotated-token"] = rehive.users[TOKEN_A]
    assert client.post("/rotate/", json={"token": "canary-rotated-token"}).status_code == 200
    assert state.pool.drain() == 1
    assert state.inbox.get("1", "acme")[0]["status"] == "done"


def test_single_mode_claims_only_its_own_companys_events(settings, apps):
    app = apps(settings)
    state = webhooks_of(app)
    state.inbox.insert("someone-else", "x1", EVENT, json.dumps({"data": {}}))
    assert state.pool.drain() == 0
    assert state.inbox.counts() == {"received": 1}


def test_the_registry_keeps_one_client_per_company_across_rotations(app):
    """A token replaced (by /rotate/ here or in another process) leaves no client of it in memory."""
    registry = registry_of(app)
    store = app.extensions["store"]
    store.activate_company("acme", registry.encrypt("token-1"), "u-svc", registry.encrypt("s"), [EVENT])
    first = registry.client("acme")
    assert registry.client("acme") is first  # one client per token, not one per call
    for n in range(2, 6):
        store.replace_token("acme", registry.encrypt(f"token-{n}"), "u-svc")
        assert registry.client("acme") is not first
    assert [key for key in registry._clients if key[0] == "acme"] == [
        ("acme", store.registration("acme")["token"])
    ]
