"""The manage page and its API: who may call it, what it shows, and that it never leaves the company."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.conftest import API, COMPANY, rehive_user

AUTH = API + "auth/"
WEBHOOKS = API + "admin/webhooks/"
ADMIN = {"Authorization": "Token admin-user-token"}
OTHER = "other-co"


def _as(rsps, group="admin", company=COMPANY) -> None:
    rsps.get(AUTH, json={"status": "success", "data": rehive_user("u-admin", company=company, group=group)})


def _store(inbox, event_id, event="transaction.execute", company=COMPANY, status=None, data=None, now=None):
    body = {"id": event_id, "event": event, "company": company, "data": data or {"note": "hi"}}
    inbox.insert(company, event_id, event, json.dumps(body), now=now)
    if status:
        conn = inbox.connection()
        conn.execute(
            "UPDATE webhook_events SET status = ?, due_at = NULL, last_error = ?, attempts = 8"
            " WHERE company = ? AND id = ?",
            (status, "boom" if status in ("failed", "dead") else None, company, event_id),
        )


@pytest.fixture
def seeded(inbox):
    """Five events of ours (oldest first) and two of another company, with the same ids."""
    for number, (status, event) in enumerate(
        [
            ("done", "transaction.create"),
            ("dead", "transaction.execute"),
            ("failed", "transaction.execute"),
            ("dead", "transaction.execute"),
            (None, "user.create"),
        ]
    ):
        _store(inbox, f"e{number}", event, status=status, now=1_700_000_000 + number)
    _store(inbox, "e1", company=OTHER, status="dead")
    _store(inbox, "x9", company=OTHER, status="dead")
    return inbox


# -- the page ------------------------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_policy_and_no_inline_script_or_style(client):
    response = client.get("/manage/")
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "connect-src 'self' https://rehive.test;" in policy  # where the browser logs in
    assert "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    html = response.get_data(as_text=True)
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/manage/static/manage.js" defer>']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert 'data-rehive-api-url="https://rehive.test/3/"' in html
    assert "Try the flow" not in html  # local mode only


def test_local_mode_offers_the_try_the_flow_panel(settings):
    from app import create_app

    html = create_app(settings.replace(local_mode=True)).test_client().get("/manage/").get_data(as_text=True)
    assert "Try the flow" in html and 'data-local-mode="true"' in html


def test_the_script_and_style_are_ours_and_never_use_inner_html(client):
    with client.get("/manage/static/manage.js") as script:  # a file response: close it
        assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
        assert script.headers["X-Content-Type-Options"] == "nosniff"
        source = script.get_data(as_text=True)
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "localStorage"):
        assert unsafe not in source
    assert "http://" not in source and "https://" not in source  # nothing from elsewhere
    with client.get("/manage/static/manage.css") as style:
        assert style.status_code == 200


# -- who may call ---------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/manage/api/status/"),
    ("GET", "/manage/api/events/"),
    ("GET", "/manage/api/events/e1/"),
    ("POST", "/manage/api/events/e1/replay/"),
    ("POST", "/manage/api/events/replay-dead/"),
    ("GET", "/manage/api/settings/"),
    ("PATCH", "/manage/api/settings/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_without_a_token_every_call_is_a_401(client, seeded, method, path):
    response = client.open(path, method=method, json={"savings_percent": 50})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    assert response.headers["Cache-Control"] == "no-store"
    assert seeded.counts_of(COMPANY) == {"done": 1, "dead": 2, "failed": 1, "received": 1}


@pytest.mark.parametrize(("group", "company"), [("user", COMPANY), ("admin", OTHER), ("service", OTHER)])
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_a_user_or_another_companys_admin_is_a_403_and_changes_nothing(
    client, rsps, seeded, group, company, method, path
):
    _as(rsps, group, company)
    response = client.open(path, method=method, headers=ADMIN, json={"savings_percent": 50})
    assert response.status_code == 403
    assert response.json["status"] == "error"
    assert seeded.counts_of(COMPANY) == {"done": 1, "dead": 2, "failed": 1, "received": 1}
    assert seeded.company_setting(COMPANY, "savings_percent") is None


def test_a_service_user_may_call_it(client, rsps, seeded):
    _as(rsps, "service")
    assert client.get("/manage/api/settings/", headers=ADMIN).status_code == 200


# -- status ---------------------------------------------------------------------------------------


def test_status_shows_our_webhooks_without_secrets_and_counts_of_our_company_only(client, rsps, seeded):
    _as(rsps)
    hooks = [
        {
            "id": 1,
            "url": "http://localhost/webhooks/",
            "event": "transaction.execute",
            "secret": "s3cr3t",
            "enabled": True,
        },
        {
            "id": 2,
            "url": "http://localhost/webhooks",
            "event": "transaction.create",
            "secret": "s3cr3t",
            "enabled": False,
        },
        {
            "id": 3,
            "url": "https://elsewhere.test/webhooks/",
            "event": "user.create",
            "secret": "s3cr3t",
            "enabled": True,
        },
    ]
    rsps.get(WEBHOOKS, json={"status": "success", "data": {"count": 3, "next": None, "results": hooks}})
    response = client.get("/manage/api/status/", headers=ADMIN)
    assert response.status_code == 200
    data = response.json["data"]
    assert data["company"] == COMPANY and data["mode"] == "single" and data["token_status"] == "valid"
    assert data["counts"] == {"received": 1, "processing": 0, "done": 1, "failed": 1, "dead": 2}
    assert [(hook["event"], hook["enabled"]) for hook in data["webhooks"]] == [
        ("transaction.execute", True),
        ("transaction.create", False),
    ]
    assert "s3cr3t" not in response.get_data(as_text=True)
    assert data["webhook_url"] == "http://localhost/webhooks/"


@pytest.mark.parametrize(
    ("answer", "token_status"),
    [
        ({"status": 401, "json": {"status": "error", "message": "Invalid token."}}, "invalid"),
        ({"status": 403, "json": {"status": "error", "message": "No."}}, "valid"),
        ({"body": requests.ConnectionError("refused")}, "unknown"),
    ],
)
def test_status_works_when_rehive_cannot_list_the_webhooks(client, rsps, seeded, answer, token_status):
    _as(rsps)
    for _ in range(3 if "body" in answer else 1):  # GETs are retried on connection errors
        rsps.get(WEBHOOKS, **answer)
    response = client.get("/manage/api/status/", headers=ADMIN)
    assert response.status_code == 200
    data = response.json["data"]
    assert data["token_status"] == token_status
    assert data["webhooks"] is None and data["webhooks_error"]
    assert data["counts"]["dead"] == 2


# -- events ---------------------------------------------------------------------------------------


def _ids(response) -> list[str]:
    return [row["id"] for row in response.json["data"]["results"]]


def test_events_are_newest_first_filtered_and_paged_in_rehives_envelope(client, rsps, seeded):
    _as(rsps)
    everything = client.get("/manage/api/events/", headers=ADMIN)
    assert everything.status_code == 200
    assert everything.headers["Cache-Control"] == "no-store"
    data = everything.json["data"]
    assert (data["count"], data["next"], data["previous"]) == (5, None, None)
    assert _ids(everything) == ["e4", "e3", "e2", "e1", "e0"]  # never the other company's
    assert set(data["results"][0]) == {
        "id",
        "event",
        "status",
        "attempts",
        "received_at",
        "updated_at",
        "last_error",
    }
    assert data["results"][4]["received_at"] == "2023-11-14T22:13:20.000Z"

    dead = client.get("/manage/api/events/?status=dead", headers=ADMIN)
    assert _ids(dead) == ["e3", "e1"]
    created = client.get("/manage/api/events/?event=transaction.create", headers=ADMIN)
    assert _ids(created) == ["e0"]

    first = client.get("/manage/api/events/?event=transaction.execute&page_size=2", headers=ADMIN)
    assert _ids(first) == ["e3", "e2"] and first.json["data"]["count"] == 3
    assert first.json["data"]["next"] == (
        "http://localhost/manage/api/events/?event=transaction.execute&page_size=2&page=2"
    )
    second = client.get(first.json["data"]["next"], headers=ADMIN)
    assert _ids(second) == ["e1"] and second.json["data"]["next"] is None
    assert second.json["data"]["previous"].endswith("page=1")
    assert client.get("/manage/api/events/?page=4&page_size=2", headers=ADMIN).status_code == 404
    assert client.get("/manage/api/events/?status=received&page=1", headers=ADMIN).json["data"]["count"] == 1


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "status=DEAD",
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "page=%EF%BC%91",  # a full-width digit
        "page=9999999999",
        "page_size=0",
        "page_size=x",
        "page=1&page=2",
        "status=dead&status=done",
        "company=other-co",
        "user=u-1",
        "event=" + "x" * 101,
    ],
)
def test_a_bad_list_query_is_a_400_naming_it(client, rsps, seeded, query):
    _as(rsps)
    response = client.get(f"/manage/api/events/?{query}", headers=ADMIN)
    assert response.status_code == 400
    assert response.json["status"] == "error" and response.json["message"]


def test_one_event_shows_its_payload_with_codes_masked_as_the_cli_does(client, rsps, inbox):
    _as(rsps)
    _store(inbox, "v1", "user.email.verify", data={"user": "u-1", "otp": "123456", "note": "<b>x</b>"})
    _store(inbox, "t1", "transaction.execute", status="failed", data={"id": "tx-1", "token": "plain"})
    masked = client.get("/manage/api/events/v1/", headers=ADMIN)
    assert masked.status_code == 200
    assert masked.json["data"]["data"] == {"user": "u-1", "otp": "[redacted]", "note": "<b>x</b>"}
    assert "123456" not in masked.get_data(as_text=True)
    plain = client.get("/manage/api/events/t1/", headers=ADMIN).json["data"]
    assert plain["data"] == {"id": "tx-1", "token": "plain"}  # not a sensitive event: as the CLI shows it
    assert (plain["status"], plain["attempts"], plain["last_error"]) == ("failed", 8, "boom")
    assert {"next_attempt_at", "done_at", "traceback", "updated_at"} <= set(plain)


def test_another_companys_event_is_a_404_whatever_is_asked(client, rsps, seeded):
    _as(rsps)
    assert client.get("/manage/api/events/x9/", headers=ADMIN).status_code == 404
    assert client.post("/manage/api/events/x9/replay/", headers=ADMIN).status_code == 404
    assert client.get("/manage/api/events/" + "a" * 101 + "/", headers=ADMIN).status_code == 404
    assert seeded.get("x9", OTHER)[0]["status"] == "dead"


def test_replay_puts_a_dead_event_back_and_refuses_one_still_waiting(client, rsps, seeded):
    _as(rsps)
    replayed = client.post("/manage/api/events/e1/replay/", headers=ADMIN)
    assert replayed.status_code == 200
    assert (replayed.json["data"]["status"], replayed.json["data"]["attempts"]) == ("received", 0)
    assert seeded.get("e1", OTHER)[0]["status"] == "dead"  # the same id of another company is untouched
    again = client.post("/manage/api/events/e1/replay/", headers=ADMIN)
    assert again.status_code == 409 and "received" in again.json["message"]
    assert client.post("/manage/api/events/e0/replay/", headers=ADMIN).status_code == 200  # done
    assert client.post("/manage/api/events/nope/replay/", headers=ADMIN).status_code == 404


def test_replay_all_dead_replays_only_our_companys(client, rsps, seeded):
    _as(rsps)
    response = client.post("/manage/api/events/replay-dead/", headers=ADMIN)
    assert response.status_code == 200 and response.json["data"] == {"replayed": 2}
    assert seeded.counts_of(COMPANY).get("dead") is None
    assert seeded.counts_of(OTHER) == {"dead": 2}
    assert client.post("/manage/api/events/replay-dead/", headers=ADMIN).json["data"] == {"replayed": 0}


# -- settings -------------------------------------------------------------------------------------


def test_settings_default_to_savings_percent_and_a_change_sticks_for_our_company_only(client, rsps, inbox):
    _as(rsps)
    assert client.get("/manage/api/settings/", headers=ADMIN).json["data"] == {"savings_percent": 0}
    changed = client.patch("/manage/api/settings/", headers=ADMIN, json={"savings_percent": 25})
    assert changed.status_code == 200 and changed.json["data"] == {"savings_percent": 25}
    assert client.get("/manage/api/settings/", headers=ADMIN).json["data"] == {"savings_percent": 25}
    assert inbox.company_setting(OTHER, "savings_percent") is None
    assert (
        client.patch("/manage/api/settings/", headers=ADMIN, json={"savings_percent": 0}).status_code == 200
    )
    assert inbox.company_setting(COMPANY, "savings_percent") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"savings_percent": -1},
        {"savings_percent": 101},
        {"savings_percent": 10.5},
        {"savings_percent": 10.0},
        {"savings_percent": "10"},
        {"savings_percent": True},
        {"savings_percent": None},
        {"savings_percent": [10]},
        {"savings_percent": 10, "company": OTHER},
        {"other": 1},
        {},
        [],
        "10",
        b"{not json",
        b"",
        b'{"savings_percent": 1e400}',
        b'{"savings_percent": ' + b"9" * 5000 + b"}",
    ],
)
def test_a_bad_settings_change_is_a_400_and_changes_nothing(client, rsps, inbox, body):
    _as(rsps)
    inbox.set_company_setting(COMPANY, "savings_percent", 7)
    if isinstance(body, bytes):
        response = client.patch(
            "/manage/api/settings/", headers=ADMIN, data=body, content_type="application/json"
        )
    else:
        response = client.patch("/manage/api/settings/", headers=ADMIN, json=body)
    assert response.status_code == 400
    assert response.json["status"] == "error"
    assert inbox.company_setting(COMPANY, "savings_percent") == 7


def test_the_stand_in_lets_the_page_log_in_from_the_browser():
    from local_rehive.app import create_app as create_stand_in

    stand_in = create_stand_in().test_client()
    preflight = stand_in.options(
        "/3/auth/login/",
        headers={
            "Origin": "http://127.0.0.1:8000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    login = stand_in.post(
        "/3/auth/login/", json={"user": "admin@demo.test", "company": "demo", "password": "admin-pass-123"}
    )
    assert login.status_code == 200 and login.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in stand_in.get("/_control/").headers  # the control API: no


def test_the_webhooks_cache_stays_bounded_whatever_hosts_callers_send(monkeypatch):
    from manage import api as manage_api

    asked = []
    monkeypatch.setattr(manage_api, "_ask_rehive_for_webhooks", lambda url: asked.append(url) or {"url": url})
    cache = manage_api.WebhooksCache(ttl=60)
    for n in range(manage_api.MAX_CACHED * 3):
        assert cache.get("acme", f"http://host-{n}.test/webhooks") == {
            "url": f"http://host-{n}.test/webhooks"
        }
    assert len(cache._items) <= manage_api.MAX_CACHED
    cache.get("acme", f"http://host-{manage_api.MAX_CACHED * 3 - 1}.test/webhooks")  # the newest is kept
    assert len(asked) == manage_api.MAX_CACHED * 3
