"""Down past Rehive's retries: `flask webhooks reconcile` recovers every missed event, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

from devtools.processes import ROOT, service_env, wait_for
from devtools.stand_in import LOCAL_ADMIN_TOKEN
from webhooks.inbox import Inbox

COMPANY = "demo"
RETRIES = [0.05, 0.1]


def _reconcile(env: dict[str, str], cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "webhooks", "reconcile", *args],
        cwd=cwd,  # not the checkout: a developer's .env must not change the run
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rows(path) -> list[dict]:
    store = Inbox(str(path))
    try:
        return [store.get(row["id"], row["company"])[0] for row in store.list_events()]
    finally:
        store.close()


def test_events_rehive_gave_up_on_while_we_were_down_are_stored_once(
    tmp_path, rehive, start, stand_in, webhook_secret
):
    stand_in.control("", webhook_retry_delays=RETRIES)
    first = start(REHIVE_COMPANY=COMPANY)  # registers create, initiate and execute at its /webhooks/
    webhook_url = first.url + "/webhooks/"
    first.stop()  # down: the port refuses every attempt

    credits = [
        stand_in.admin(
            "POST",
            "admin/transactions/credit/",
            json={"user": "alice@demo.test", "amount": amount, "currency": "USD"},
        )
        for amount in (101, 202, 303)
    ]
    transactions = {response.json()["data"]["id"] for response in credits}

    def given_up() -> dict[str, dict] | None:
        by_id: dict[str, list[dict]] = defaultdict(list)
        for attempt in stand_in.control("deliveries"):
            by_id[attempt["id"]].append(attempt)
        done = all(len(attempts) == 1 + len(RETRIES) for attempts in by_id.values())
        return {i: attempts[0] for i, attempts in by_id.items()} if len(by_id) == 6 and done else None

    missed = wait_for(given_up, what="the stand-in to give up on every delivery")
    assert not any(attempt["ok"] for attempt in missed.values())

    # Back up (on another port, as after a redeploy); Rehive will not deliver those events again.
    second = start(register=False, REHIVE_COMPANY=COMPANY)
    env = service_env(
        os.environ,
        REHIVE_API_URL=rehive.url + "/3/",
        REHIVE_ADMIN_TOKEN=LOCAL_ADMIN_TOKEN,
        REHIVE_WEBHOOK_SECRET=webhook_secret,
        REHIVE_COMPANY=COMPANY,
        DATABASE_PATH=str(tmp_path / "inbox.sqlite3"),
        WEBHOOK_URL=webhook_url,
        LOG_FORMAT="json",
    )
    dry = _reconcile(env, tmp_path, "--since", "1h", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "Dry run: listed 6, already stored 0, would add 6, unreadable 0.\n"
    assert _rows(tmp_path / "inbox.sqlite3") == []

    run = _reconcile(env, tmp_path, "--since", "1h")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "listed 6, already stored 0, added 6, unreadable 0.\n"
    logged = [json.loads(line) for line in run.stderr.splitlines()]  # LOG_FORMAT=json: one object a line
    assert sum(line["message"].startswith("webhook reconciled company=demo") for line in logged) == 6
    rows = _rows(tmp_path / "inbox.sqlite3")
    assert sorted(row["id"] for row in rows) == sorted(missed), "every missed event stored once, same id"
    assert {(row["id"], row["event"]) for row in rows} == {(i, a["event"]) for i, a in missed.items()}
    assert {row["company"] for row in rows} == {COMPANY}
    assert {json.loads(row["body"])["data"]["id"] for row in rows} == transactions

    # The running service processes them like any delivery.
    wait_for(
        lambda: {row["status"] for row in _rows(tmp_path / "inbox.sqlite3")} == {"done"},
        what="the recovered events to be processed",
    )
    again = _reconcile(env, tmp_path, "--since", "1h")
    assert again.stdout == "listed 6, already stored 6, added 0, unreadable 0.\n"
    assert len(_rows(tmp_path / "inbox.sqlite3")) == 6
    for output in (dry, run, again):
        assert webhook_secret not in output.stdout + output.stderr
    assert webhook_secret not in second.log()
