"""The stand-in's services (extensions): register, activate, deactivate, rotate and purge, over real HTTP.

A tiny extension fake runs on its own loopback port: it records what the stand-in POSTs to /activate/,
/deactivate/ and /rotate/, checks each token against the stand-in's `/3/auth/` while it answers (as a
real extension does), and answers as the test tells it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from local_rehive import create_app, serve
from local_rehive.services import installer_of
from local_rehive.state import platform_of

DEMO_ADMIN = ("admin@demo.test", "admin-pass-123", "demo")
OTHER_ADMIN = ("admin@other.test", "admin-pass-123", "other")
ALICE = ("alice@demo.test", "alice-pass-123", "demo")
EVENT = "transaction.execute"


class Extension:
    """A fake extension: records every call, probes each token at the stand-in, answers as told."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        self.webhook_url: str | None = None  # set: /activate/ subscribes it with the posted token
        self.rehive = ""
        app = Flask("extension_fake")
        app.add_url_rule("/<endpoint>/", view_func=self._answer, methods=["POST"])
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def _answer(self, endpoint: str) -> Any:
        body = request.get_json()
        auth = requests.get(
            f"{self.rehive}/3/auth/", headers={"Authorization": f"Token {body['token']}"}, timeout=5
        )
        call = {"endpoint": endpoint, "body": body, "auth": auth.status_code}
        if auth.ok:
            call["user"] = auth.json()["data"]
        if endpoint == "activate" and self.webhook_url:
            created = requests.post(
                f"{self.rehive}/3/admin/webhooks/",
                headers={"Authorization": f"Token {body['token']}"},
                json={"url": self.webhook_url, "event": EVENT, "secret": "s"},
                timeout=5,
            )
            call["webhook"] = created.json()
        self.calls.append(call)
        status, answer = self.answers.get(endpoint, (201 if endpoint == "activate" else 200, {}))
        return (jsonify(answer), status) if isinstance(answer, dict) else (answer, status)

    def bodies(self, endpoint: str) -> list[dict]:
        return [call["body"] for call in self.calls if call["endpoint"] == endpoint]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class Rehive:
    """The stand-in on a free port, and the calls the tests make to it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def token(self, who: tuple[str, str, str]) -> str:
        user, password, company = who
        body = {"user": user, "company": company, "password": password}
        response = requests.post(f"{self.url}/3/auth/login/", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]["token"]

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Token {token}"}
        return requests.request(method, f"{self.url}/3/{path}", headers=headers, timeout=20, **kwargs)

    def control(self, path: str, **kwargs: Any) -> requests.Response:
        method = "POST" if "json" in kwargs else "GET"
        return requests.request(method, f"{self.url}/_control/{path}", timeout=20, **kwargs)

    def register(self, token: str, url: str, name: str = "Savings") -> dict:
        response = self.call("POST", "admin/services/", token, json={"name": name, "url": url})
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def set_active(self, token: str, service_id: int, active: bool) -> requests.Response:
        return self.call("PATCH", f"admin/services/{service_id}/", token, json={"active": active})


@pytest.fixture
def extension() -> Iterator[Extension]:
    fake = Extension()
    yield fake
    fake.close()


@pytest.fixture
def stand_in(extension: Extension) -> Iterator[Any]:
    with serve("127.0.0.1", 0) as server:
        extension.rehive = server.url
        yield server


@pytest.fixture
def rehive(stand_in: Any) -> Rehive:
    return Rehive(stand_in.url)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _installed(rehive: Rehive, extension: Extension, who=DEMO_ADMIN) -> tuple[str, dict, str]:
    """Register and activate the extension for `who`'s company; return (admin token, service, its token)."""
    admin = rehive.token(who)
    service = rehive.register(admin, extension.url)
    response = rehive.set_active(admin, service["id"], True)
    assert response.status_code == 200, response.text
    return admin, response.json()["data"], extension.bodies("activate")[-1]["token"]


# -- activation -----------------------------------------------------------------------------------


def test_activation_posts_a_live_service_token_and_installs_the_service(rehive, extension, stand_in):
    admin, service, token = _installed(rehive, extension)

    assert service["active"] is True
    assert extension.bodies("activate") == [{"token": token}]
    call = extension.calls[0]
    assert call["auth"] == 200  # the token already worked while the extension answered
    assert call["user"]["company"] == "demo"
    assert [group["name"] for group in call["user"]["groups"]] == ["service"]
    company = rehive.call("GET", "admin/company/", token).json()["data"]
    assert company["id"] == "demo"
    assert company["mode"] in ("test", "production")
    assert company["services"] == [
        {"id": service["id"], "slug": "savings", "name": "Savings", "url": extension.url, "type": "private"}
    ]
    calls = rehive.control("services/calls").json()
    assert [(row["endpoint"], row["status"], row["ok"]) for row in calls] == [("activate", 201, True)]
    assert token not in rehive.control("services/calls").text
    assert token not in rehive.call("GET", f"admin/services/{service['id']}/", admin).text
    # Activating an active service again changes nothing and calls nobody.
    assert rehive.set_active(admin, service["id"], True).status_code == 200
    assert len(extension.calls) == 1


def test_two_activations_at_once_make_one_service_user(rehive, extension):
    admin = rehive.token(DEMO_ADMIN)
    service = rehive.register(admin, extension.url)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: rehive.set_active(admin, service["id"], True), range(4)))

    assert [answer.status_code for answer in answers] == [200] * 4
    assert len(extension.bodies("activate")) == 1


def test_both_seeded_companies_can_install_it(rehive, extension):
    _, demo_service, demo_token = _installed(rehive, extension, DEMO_ADMIN)
    _, other_service, other_token = _installed(rehive, extension, OTHER_ADMIN)

    assert demo_token != other_token
    assert [call["user"]["company"] for call in extension.calls] == ["demo", "other"]
    assert rehive.call("GET", "admin/company/", other_token).json()["data"]["id"] == "other"
    assert other_service["company"] == "other" and demo_service["company"] == "demo"


@pytest.mark.parametrize(
    ("status", "answer", "message"),
    [
        (400, {"status": "error", "message": "Company not allowed."}, "Company not allowed."),
        (403, {"status": "error", "message": "Forbidden company."}, "Forbidden company."),
        (500, "<h1>crash</h1>", "Received a 500 response from {url}activate/."),
        (
            400,
            {"status": "error", "data": {"token": ["Invalid."]}},
            "Received a 400 response from {url}activate/.",
        ),
        (202, {}, "Received a 202 response from {url}activate/."),  # only 200 and 201 count
        (302, {}, "Received a 302 response from {url}activate/."),
    ],
)
def test_a_refused_activation_is_a_400_and_disables_the_user_and_token(
    rehive, extension, stand_in, status, answer, message
):
    extension.answers["activate"] = (status, answer)
    admin = rehive.token(DEMO_ADMIN)
    service = rehive.register(admin, extension.url)

    response = rehive.set_active(admin, service["id"], True)

    assert response.status_code == 400
    expected = "An error occurred in the service: " + message.format(url=extension.url)
    assert response.json() == {"status": "error", "message": expected}
    token = extension.bodies("activate")[0]["token"]
    assert rehive.call("GET", "auth/", token).status_code == 401
    user = stand_in.platform.store.users[extension.calls[0]["user"]["id"]]
    assert user.active is False
    stored = rehive.call("GET", f"admin/services/{service['id']}/", admin).json()["data"]
    assert stored["active"] is False
    assert rehive.call("GET", "admin/company/", admin).json()["data"]["services"] == []


def test_an_unreachable_extension_gives_unable_to_connect(rehive):
    admin = rehive.token(DEMO_ADMIN)
    url = f"http://127.0.0.1:{_free_port()}/ext/"
    service = rehive.register(admin, url)

    response = rehive.set_active(admin, service["id"], True)

    assert response.status_code == 400
    assert (
        response.json()["message"]
        == f"An error occurred in the service: Unable to connect to {url}activate/."
    )
    [row] = rehive.control("services/calls").json()
    assert (row["status"], row["ok"], row["error"]) == (None, False, "ConnectionError")


def test_a_second_activation_after_a_refusal_uses_a_new_user(rehive, extension):
    extension.answers["activate"] = (400, {"message": "Not yet."})
    admin = rehive.token(DEMO_ADMIN)
    service = rehive.register(admin, extension.url)
    assert rehive.set_active(admin, service["id"], True).status_code == 400
    del extension.answers["activate"]

    assert rehive.set_active(admin, service["id"], True).status_code == 200

    first, second = extension.calls
    assert first["user"]["id"] != second["user"]["id"]
    assert rehive.call("GET", "auth/", first["body"]["token"]).status_code == 401
    assert rehive.call("GET", "auth/", second["body"]["token"]).status_code == 200


# -- deactivation, rotation, purge ------------------------------------------------------------------


def test_deactivation_posts_the_token_then_deactivates_the_user(rehive, extension, stand_in):
    admin, service, token = _installed(rehive, extension)

    response = rehive.set_active(admin, service["id"], False)

    assert response.status_code == 200
    assert response.json()["data"]["active"] is False
    assert extension.bodies("deactivate") == [{"token": token, "purge": False}]
    assert extension.calls[-1]["auth"] == 200  # the token still worked during the call
    assert rehive.call("GET", "auth/", token).status_code == 401
    assert stand_in.platform.store.users[extension.calls[0]["user"]["id"]].active is False
    assert rehive.call("GET", "admin/company/", admin).json()["data"]["services"] == []


def test_deactivation_completes_even_when_the_extension_refuses(rehive, extension):
    extension.answers["deactivate"] = (500, {})
    admin, service, token = _installed(rehive, extension)

    response = rehive.set_active(admin, service["id"], False)

    assert response.status_code == 200
    assert response.json()["data"]["active"] is False
    assert rehive.call("GET", "auth/", token).status_code == 401
    last = rehive.control("services/calls").json()[-1]
    assert (last["endpoint"], last["status"], last["ok"]) == ("deactivate", 500, False)


def test_rotation_replaces_the_token_once_the_extension_accepts_it(rehive, extension):
    _, service, old = _installed(rehive, extension)

    response = rehive.control(f"services/{service['id']}/rotate", json={})

    assert response.status_code == 200, response.text
    [body] = extension.bodies("rotate")
    new = body["token"]
    assert new != old
    assert extension.calls[-1]["auth"] == 200  # the new token worked while the extension answered
    assert response.json() == {
        "service": service["id"],
        "company": "demo",
        "action": "rotate",
        "url": f"{extension.url}rotate/",
        "status": 200,
        "ok": True,
        "message": None,
        "active": True,
    }
    assert rehive.call("GET", "auth/", old).status_code == 401
    assert rehive.call("GET", "auth/", new).status_code == 200
    assert extension.calls[-1]["user"]["id"] == extension.calls[0]["user"]["id"]  # the same service user


def test_a_refused_rotation_keeps_the_old_token(rehive, extension):
    extension.answers["rotate"] = (400, {"message": "Company is not active."})
    admin, service, old = _installed(rehive, extension)

    response = rehive.control(f"services/{service['id']}/rotate", json={})

    assert response.status_code == 200
    answer = response.json()
    assert (answer["status"], answer["ok"]) == (400, False)
    assert answer["message"] == "An error occurred in the service: Company is not active."
    new = extension.bodies("rotate")[0]["token"]
    assert rehive.call("GET", "auth/", new).status_code == 401
    assert rehive.call("GET", "auth/", old).status_code == 200
    # Deactivation later posts the token the extension still holds.
    rehive.set_active(admin, service["id"], False)
    assert extension.bodies("deactivate") == [{"token": old, "purge": False}]


def test_purge_posts_deactivate_with_purge_true(rehive, extension):
    _, service, token = _installed(rehive, extension)

    response = rehive.control(f"services/{service['id']}/purge", json={})

    assert response.status_code == 200
    assert response.json()["action"] == "purge"
    assert response.json()["active"] is False
    assert extension.bodies("deactivate") == [{"token": token, "purge": True}]
    assert rehive.call("GET", "auth/", token).status_code == 401
    assert token not in response.text


def test_rotate_and_purge_need_an_active_service(rehive, extension):
    admin = rehive.token(DEMO_ADMIN)
    service = rehive.register(admin, extension.url)
    for action in ("rotate", "purge"):
        inactive = rehive.control(f"services/{service['id']}/{action}", json={})
        assert inactive.status_code == 400
        assert rehive.control(f"services/999/{action}", json={}).status_code == 404
    assert extension.calls == []


# -- webhooks tied to a service ------------------------------------------------------------------


def test_webhooks_created_by_the_service_user_are_locked_while_it_is_active(rehive, extension):
    extension.webhook_url = f"{extension.url}webhooks/"
    admin, service, token = _installed(rehive, extension)
    webhook = extension.calls[0]["webhook"]["data"]
    path = f"admin/webhooks/{webhook['id']}/"

    assert webhook["service"] == {
        "id": service["id"],
        "slug": service["slug"],
        "name": "Savings",
        "url": extension.url,
        "type": "private",
    }
    assert rehive.call("PATCH", path, admin, json={"enabled": False}).status_code == 400
    assert rehive.call("DELETE", path, admin).status_code == 400
    assert rehive.call("DELETE", path, token).status_code == 400  # not even by the service itself
    assert rehive.call("GET", path, admin).json()["data"]["enabled"] is True
    duplicate = {"url": webhook["url"], "event": EVENT}
    refused = rehive.call("POST", "admin/webhooks/", admin, json=duplicate)
    assert refused.status_code == 400
    assert refused.json()["message"] == "A webhook with the url and event already exists"
    own = rehive.call("POST", "admin/webhooks/", admin, json={"url": extension.url, "event": EVENT})
    assert own.json()["data"]["service"] is None
    assert rehive.call("DELETE", f"admin/webhooks/{own.json()['data']['id']}/", admin).status_code == 200

    rehive.set_active(admin, service["id"], False)

    assert rehive.call("PATCH", path, admin, json={"enabled": False}).status_code == 200
    assert rehive.call("DELETE", path, admin).json() == {"status": "success"}
    assert rehive.call("GET", path, admin).status_code == 404


# -- who may do what -----------------------------------------------------------------------------


def test_services_are_private_to_their_company_and_to_admins(rehive, extension):
    demo_admin, service, _ = _installed(rehive, extension)
    other_admin, alice = rehive.token(OTHER_ADMIN), rehive.token(ALICE)
    path = f"admin/services/{service['id']}/"

    for method, body in (("GET", None), ("PATCH", {"active": False}), ("DELETE", None)):
        assert rehive.call(method, path, other_admin, json=body).status_code == 404
        assert rehive.call(method, path, alice, json=body).status_code == 403
    assert rehive.call("GET", "admin/services/", other_admin).json()["data"]["count"] == 0
    assert rehive.call("GET", "admin/services/", alice).status_code == 403
    assert (
        rehive.call("POST", "admin/services/", alice, json={"name": "x", "url": extension.url}).status_code
        == 403
    )
    assert rehive.call("GET", "admin/company/", alice).status_code == 403
    assert rehive.call("GET", "admin/services/?active=true", demo_admin).json()["data"]["count"] == 1
    assert rehive.call("GET", "admin/services/?active=false", demo_admin).json()["data"]["count"] == 0
    assert rehive.call("GET", "admin/services/?slug=savings", demo_admin).json()["data"]["count"] == 1
    assert rehive.call("GET", "admin/services/?slug=nope", demo_admin).json()["data"]["count"] == 0
    assert rehive.call("GET", path, demo_admin).json()["data"]["active"] is True
    assert len(extension.calls) == 1  # nothing reached the extension
    # An active service cannot be deleted; an inactive one can.
    assert rehive.call("DELETE", path, demo_admin).status_code == 400
    rehive.set_active(demo_admin, service["id"], False)
    assert rehive.call("DELETE", path, demo_admin).json() == {"status": "success"}
    assert rehive.call("GET", path, demo_admin).status_code == 404


# -- bad bodies (no network: every row is refused before anything is called) -----------------------


@pytest.fixture
def app_client():
    app = create_app()
    client = app.test_client()
    login = {"user": "admin@demo.test", "company": "demo", "password": "admin-pass-123"}
    token = client.post("/3/auth/login/", json=login).get_json()["data"]["token"]
    return app, client, {"Authorization": f"Token {token}"}


GOOD = {"name": "Savings", "url": "https://ext.example.test/"}
BAD_CREATE = [
    ("not json", b"{not json"),
    ("a list", []),
    ("a string", "name"),
    ("no name", {"url": GOOD["url"]}),
    ("empty name", {**GOOD, "name": ""}),
    ("blank name", {**GOOD, "name": "   "}),
    ("name not a string", {**GOOD, "name": 5}),
    ("name too long", {**GOOD, "name": "n" * 101}),
    ("no url", {"name": "Savings"}),
    ("url null", {**GOOD, "url": None}),
    ("url not a string", {**GOOD, "url": ["https://ext.example.test/"]}),
    ("url without scheme", {**GOOD, "url": "ext.example.test"}),
    ("url ftp", {**GOOD, "url": "ftp://ext.example.test/"}),
    ("url javascript", {**GOOD, "url": "javascript:alert(1)"}),
    ("url without host", {**GOOD, "url": "http:///activate"}),
    ("url with a space", {**GOOD, "url": "https://ext.example.test/a b"}),
    ("url with a newline", {**GOOD, "url": "https://ext.example.test/\nX-Evil: 1"}),
    ("url too long", {**GOOD, "url": "https://ext.example.test/" + "a" * 500}),
    ("description not a string", {**GOOD, "description": {"a": 1}}),
    ("tags not a list", {**GOOD, "tags": "a,b"}),
    ("tags with a number", {**GOOD, "tags": ["a", 1]}),
    ("tags with an empty one", {**GOOD, "tags": [""]}),
    ("too many tags", {**GOOD, "tags": [f"t{n}" for n in range(21)]}),
    ("management_url invalid", {**GOOD, "management_url": "not a url"}),
]
BAD_PATCH = [
    ("not json", b"[1"),
    ("a list", [{"active": True}]),
    ("active a string", {"active": "true"}),
    ("active a number", {"active": 1}),
    ("active null", {"active": None}),
    ("empty name", {"name": ""}),
    ("name null", {"name": None}),
    ("url null", {"url": None}),
    ("url invalid", {"url": "ext.example.test"}),
    ("url invalid with active", {"url": "nope", "active": True}),
    ("tags invalid with active", {"tags": "x", "active": True}),
]


def _send(client, method: str, path: str, headers: dict, body: Any):
    if isinstance(body, bytes):
        return client.open(path, method=method, headers=headers, data=body, content_type="application/json")
    return client.open(path, method=method, headers=headers, json=body)


@pytest.mark.parametrize("body", [row[1] for row in BAD_CREATE], ids=[row[0] for row in BAD_CREATE])
def test_bad_create_bodies_are_400_and_store_nothing(app_client, body):
    app, client, headers = app_client

    response = _send(client, "POST", "/3/admin/services/", headers, body)

    assert response.status_code == 400, response.get_json()
    assert response.get_json()["status"] == "error"
    assert platform_of(app).store.services == {}


@pytest.mark.parametrize("body", [row[1] for row in BAD_PATCH], ids=[row[0] for row in BAD_PATCH])
def test_bad_patch_bodies_are_400_and_change_nothing(app_client, body):
    app, client, headers = app_client
    created = client.post("/3/admin/services/", headers=headers, json={**GOOD, "tags": ["a"]}).get_json()
    path = f"/3/admin/services/{created['data']['id']}/"

    response = _send(client, "PATCH", path, headers, body)

    assert response.status_code == 400, response.get_json()
    assert client.get(path, headers=headers).get_json() == created
    assert installer_of(app).calls() == []
    assert [user.group for user in platform_of(app).store.users_of("demo")].count("service") == 1  # seeded


def test_a_good_patch_changes_fields_without_calling_the_extension(app_client):
    app, client, headers = app_client
    created = client.post("/3/admin/services/", headers=headers, json=GOOD).get_json()["data"]
    path = f"/3/admin/services/{created['id']}/"

    changed = {
        "name": "Savings 2",
        "description": "Puts money aside.",
        "tags": ["savings"],
        "management_url": None,
    }
    response = client.patch(path, headers=headers, json={**changed, "active": False})

    assert response.status_code == 200
    data = response.get_json()["data"]
    assert {name: data[name] for name in changed} == changed
    assert (data["slug"], data["active"], data["type"]) == ("savings", False, "private")
    assert installer_of(app).calls() == []
    twin = client.post("/3/admin/services/", headers=headers, json=GOOD).get_json()["data"]
    assert twin["slug"] == "savings-2"  # slugs stay unique within the company
    assert client.get("/3/admin/services/?active=maybe", headers=headers).status_code == 400
