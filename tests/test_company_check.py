"""The admin token must belong to REHIVE_COMPANY: checked once per process, before anything relies on it."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from responses import matchers

import webhooks.worker
from app import create_app
from companies import company_of
from tests.conftest import ADMIN_TOKEN, API, COMPANY, WEBHOOK_SECRET, rehive_user, webhook_body
from webhooks import webhooks_of

pytestmark = pytest.mark.company_check

AUTH = API + "auth/"
LIST = API + "admin/transactions/"
AS_ADMIN = [matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"})]
AS_USER = [matchers.header_matcher({"Authorization": "Token user-tok"})]
USER = {"Authorization": "Token user-tok"}
SECRET = {"Authorization": f"Secret {WEBHOOK_SECRET}"}


def _admin_is_of(rsps, company: str) -> None:
    data = rehive_user("u-service", company=company, group="service")
    rsps.get(AUTH, json={"status": "success", "data": data}, match=AS_ADMIN)


def _app_with_handler(settings):
    app = create_app(settings)
    runs: list[str] = []
    webhooks_of(app).registry.on("transaction.execute")(lambda event, client: runs.append(event.id))
    return app, runs


def test_another_companys_admin_token_stops_custom_endpoints_and_handlers_not_deliveries(
    settings, rsps, caplog
):
    caplog.set_level(logging.INFO)
    _admin_is_of(rsps, "other")
    app, runs = _app_with_handler(settings)
    client = app.test_client()

    response = client.get("/custom/transactions/", headers=USER)
    assert response.status_code == 502
    assert response.get_json() == {"status": "error", "message": "The service is misconfigured."}

    assert client.post("/webhooks/", headers=SECRET, json=webhook_body(event_id=1)).status_code == 202
    state = webhooks_of(app)
    assert state.pool.drain() == 0
    [row] = state.inbox.get("1")
    assert (row["status"], row["attempts"]) == ("received", 0)

    result = app.test_cli_runner().invoke(args=["webhooks", "work", "--drain"])
    assert result.exit_code != 0
    assert "'acme'" in result.output and "'other'" in result.output
    assert runs == []
    assert state.inbox.get("1")[0]["status"] == "received"

    [logged] = [
        r for r in caplog.records if r.levelno == logging.ERROR and "REHIVE_COMPANY" in r.getMessage()
    ]
    assert "'acme'" in logged.getMessage() and "'other'" in logged.getMessage()
    assert ADMIN_TOKEN not in caplog.text
    assert len(rsps.calls) == 1  # one check per process; the user's token was never sent


def test_until_rehive_answers_custom_requests_get_503_and_handlers_wait(settings, rsps, monkeypatch):
    monkeypatch.setattr(webhooks.worker, "COMPANY_WAIT_SECONDS", 0.05)
    answer = threading.Event()

    def slow_auth(request):
        answer.wait(30)
        data = rehive_user("u-service", company=COMPANY, group="service")
        return 200, {}, json.dumps({"status": "success", "data": data})

    rsps.add_callback("GET", AUTH, callback=slow_auth, match=AS_ADMIN)
    app, runs = _app_with_handler(settings)
    company_of(app).wait_seconds = 0.05
    client = app.test_client()
    try:
        response = client.get("/custom/transactions/", headers=USER)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert client.post("/webhooks/", headers=SECRET, json=webhook_body(event_id=1)).status_code == 202
        state = webhooks_of(app)
        assert not state.pool.process_one()
        assert state.inbox.get("1")[0]["status"] == "received"
    finally:
        answer.set()

    rsps.get(AUTH, json={"status": "success", "data": rehive_user()}, match=AS_USER)
    rsps.get(
        LIST, json={"status": "success", "data": {"count": 0, "next": None, "previous": None, "results": []}}
    )
    company_of(app).wait_seconds = 10
    assert client.get("/custom/transactions/", headers=USER).status_code == 200
    assert state.pool.drain() == 1
    assert runs == ["1"]


def test_the_admin_token_of_our_company_is_checked_once_and_everything_runs(settings, rsps):
    _admin_is_of(rsps, COMPANY)
    app, runs = _app_with_handler(settings)
    client = app.test_client()
    for token in ("tok-a", "tok-b"):
        rsps.get(
            AUTH,
            json={"status": "success", "data": rehive_user()},
            match=[matchers.header_matcher({"Authorization": f"Token {token}"})],
        )
        rsps.get(LIST, json={"status": "success", "data": {"count": 0, "next": None, "results": []}})
        assert (
            client.get("/custom/transactions/", headers={"Authorization": f"Token {token}"}).status_code
            == 200
        )
    assert client.post("/webhooks/", headers=SECRET, json=webhook_body(event_id=1)).status_code == 202
    assert webhooks_of(app).pool.drain() == 1
    assert runs == ["1"]
    result = app.test_cli_runner().invoke(args=["webhooks", "work", "--drain"])
    assert result.exit_code == 0, result.output
    checks = [
        c for c in rsps.calls if c.request.url == AUTH and ADMIN_TOKEN in c.request.headers["Authorization"]
    ]
    assert len(checks) == 1


def test_an_outage_during_the_check_is_503_and_it_is_asked_again(settings, rsps):
    rsps.get(AUTH, status=500, json={"status": "error", "message": "x"}, match=AS_ADMIN)
    app = create_app(settings)
    client = app.test_client()
    assert client.get("/custom/transactions/", headers=USER).status_code == 503
    _admin_is_of(rsps, COMPANY)
    rsps.get(AUTH, json={"status": "success", "data": rehive_user()}, match=AS_USER)
    rsps.get(LIST, json={"status": "success", "data": {"count": 0, "next": None, "results": []}})
    assert client.get("/custom/transactions/", headers=USER).status_code == 200
