"""Another company's admin token, over real HTTP: the service refuses to act, but keeps deliveries."""

from __future__ import annotations

import json

import requests

from devtools.processes import wait_for
from webhooks.inbox import Inbox


def test_a_token_of_another_company_gives_502_and_stores_deliveries_without_running_them(
    start, stand_in, tmp_path, webhook_secret
):
    # The stand-in's admin token belongs to `demo`; the service is told it serves `other`.
    service = start(register=False, REHIVE_COMPANY="other", SAVINGS_PERCENT="10")
    log = tmp_path / "service.log"
    wait_for(
        lambda: "admin token belongs to company 'demo'" in log.read_text(),
        timeout=20,
        what="the mismatch to be logged",
    )
    assert "REHIVE_COMPANY is 'other'" in log.read_text()

    mallory = stand_in.login("mallory@other.test", "mallory-pass-123", company="other")
    response = requests.get(
        f"{service.url}/custom/transactions/", headers={"Authorization": f"Token {mallory}"}, timeout=15
    )
    assert response.status_code == 502
    assert response.json() == {"status": "error", "message": "The service is misconfigured."}
    whoami = [c for c in stand_in.control("auth-calls") if c["path"] == "/3/auth/" and c["method"] == "GET"]
    assert {call["company"] for call in whoami} == {"demo"}  # only the admin token's check, never her token

    envelope = {"id": "evt-other-1", "event": "transaction.execute", "company": "other", "data": {"id": "x"}}
    delivered = requests.post(
        f"{service.url}/webhooks/",
        data=json.dumps(envelope),
        headers={"Authorization": f"Secret {webhook_secret}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert delivered.status_code == 202
    inbox = Inbox(str(tmp_path / "inbox.sqlite3"))
    try:
        [row] = inbox.get("evt-other-1")
    finally:
        inbox.close()
    assert (row["status"], row["attempts"]) == ("received", 0)
    assert "local-demo-admin-token" not in log.read_text()
