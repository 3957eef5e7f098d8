"""`flask webhooks reconcile`: store the deliveries Rehive's history lists and the inbox lacks."""

from __future__ import annotations

import json
import logging
import time

import pytest
from responses import matchers

from app import create_app
from tests.conftest import ADMIN_TOKEN, API, COMPANY, webhook_body
from webhooks import reconcile, webhooks_of

OUR_URL = "https://svc.example/webhooks/"
TASKS = API + "admin/webhook-tasks/"
HOOK_SECRET = "canary-hook-secret-in-rehive-answers"


def task(task_id, event="transaction.execute", url=OUR_URL) -> dict:
    hook = {"id": 7, "url": url, "event": event, "secret": HOOK_SECRET, "enabled": True}
    return {"id": task_id, "webhook": hook, "tries": 8, "completed": None, "failed": 1, "archived": False}


def page(items, next_url=None) -> dict:
    return {
        "status": "success",
        "data": {"count": len(items), "next": next_url, "previous": None, "results": items},
    }


def detail(task_id, data) -> dict:
    return {"status": "success", "data": {**task(task_id), "data": data}}


@pytest.fixture
def app(settings):
    return create_app(settings.replace(webhook_url=OUR_URL))


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def _stored(app, event_id) -> dict | None:
    rows = webhooks_of(app).inbox.get(event_id, COMPANY)
    return json.loads(rows[0]["body"]) if rows else None


def test_reconcile_stores_what_is_missing_once_and_counts_everything(app, runner, rsps, caplog):
    caplog.set_level(logging.INFO)
    webhooks_of(app).inbox.insert(
        COMPANY, "t-stored", "transaction.execute", json.dumps(webhook_body("t-stored"))
    )
    listing = {"webhook__url": OUR_URL, "page_size": "100"}
    rsps.get(
        TASKS,
        json=page(
            [task("t-stored"), task("t-new"), task(42, event="transaction.create")],
            next_url=TASKS + "?page=2",
        ),
        match=[
            matchers.query_param_matcher({**listing, "page": "1"}, strict_match=False),
            matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"}),
        ],
    )
    rsps.get(
        TASKS,
        json=page([task("t-gone"), task("t-elsewhere", url="https://other.example/hook/")]),
        match=[matchers.query_param_matcher({**listing, "page": "2"}, strict_match=False)],
    )
    rsps.get(TASKS + "t-new/", json=detail("t-new", {"id": "tx-1", "amount": 500}))
    # The whole envelope as `data` is read as well as its `data` alone.
    rsps.get(
        TASKS + "42/",
        json=detail(
            42, {"id": 42, "event": "transaction.create", "company": COMPANY, "data": {"id": "tx-2"}}
        ),
    )
    rsps.get(TASKS + "t-gone/", status=404, json={"status": "error", "message": "Not found."})

    before = time.time()
    result = runner.invoke(args=["webhooks", "reconcile", "--since", "24h"])
    assert result.exit_code == 0, result.output
    assert result.output == "listed 4, already stored 1, added 2, unreadable 1.\n"
    after = time.time()
    since_ms = int(rsps.calls[0].request.params["created__gte"])  # Rehive's times: ms since the epoch
    assert int((before - 86400) * 1000) <= since_ms <= (after - 86400) * 1000
    assert _stored(app, "t-new") == {
        "id": "t-new",
        "event": "transaction.execute",
        "company": COMPANY,
        "data": {"id": "tx-1", "amount": 500},
    }
    assert _stored(app, "42")["data"] == {"id": "tx-2"}
    assert _stored(app, "t-elsewhere") is None and _stored(app, "t-gone") is None
    assert HOOK_SECRET not in result.output + caplog.text
    assert HOOK_SECRET not in json.dumps([dict(row) for row in webhooks_of(app).inbox.list_events()])


def test_a_second_run_adds_nothing_and_a_dry_run_stores_nothing(app, runner, rsps):
    rsps.get(TASKS, json=page([task("t-1")]))
    assert runner.invoke(args=["webhooks", "reconcile", "--dry-run"]).output == (
        "Dry run: listed 1, already stored 0, would add 1, unreadable 0.\n"
    )
    assert _stored(app, "t-1") is None
    rsps.get(TASKS + "t-1/", json=detail("t-1", {"id": "tx"}))
    assert runner.invoke(args=["webhooks", "reconcile"]).output.endswith("added 1, unreadable 0.\n")
    assert (
        runner.invoke(args=["webhooks", "reconcile"]).output
        == "listed 1, already stored 1, added 0, unreadable 0.\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "is not a duration"),
        (["--since", "0h"], "is not a duration"),
        (["--since", "-5m"], "is not a duration"),
    ],
)
def test_bad_arguments_are_refused_before_any_call(runner, args, message):
    result = runner.invoke(args=["webhooks", "reconcile", *args])
    assert result.exit_code == 2 and message in result.output


def test_without_a_webhook_url_reconcile_says_what_to_set(settings, rsps):
    result = create_app(settings).test_cli_runner().invoke(args=["webhooks", "reconcile"])
    assert result.exit_code == 2 and "WEBHOOK_URL" in result.output


def test_a_refused_admin_token_stops_the_run_with_a_clear_error(runner, rsps):
    rsps.get(TASKS, status=403, json={"status": "error", "message": "You do not have permission."})
    result = runner.invoke(args=["webhooks", "reconcile"])
    assert result.exit_code == 1
    assert "RehiveForbidden: You do not have permission." in result.output
    assert ADMIN_TOKEN not in result.output


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400), ("90m", 5400), ("7d", 604800), ("3600", 3600), ("1.5h", 5400)]
)
def test_since_reads_durations(text, seconds):
    assert reconcile.parse_since(text) == seconds


def test_the_periodic_run_happens_once_per_period_across_processes(settings, rsps):
    app = create_app(settings.replace(webhook_url=OUR_URL, webhook_reconcile_minutes=10))
    rsps.get(
        TASKS,
        json=page([]),
        match=[matchers.query_param_matcher({"completed__isnull": "true"}, strict_match=False)],
    )
    now = time.time()
    assert reconcile.run_periodic_once(app, now=now) is not None
    assert reconcile.run_periodic_once(app, now=now + 300) is None  # another process's turn was taken
    assert len(rsps.calls) == 1
