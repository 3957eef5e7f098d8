"""`flask webhooks list|show|replay|work`."""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner
from flask.cli import FlaskGroup

from app import create_app
from tests.conftest import BACKENDS, COMPANY, both_backends, webhook_body
from webhooks import webhooks_of

backend = pytest.fixture(params=BACKENDS)(both_backends)


def _store(app, event_id, event="test.event", data=None, company=COMPANY) -> None:
    body = json.dumps(webhook_body(event_id=event_id, event=event, company=company, data=data))
    assert webhooks_of(app).inbox.insert(company, str(event_id), event, body)


def _fail_until_dead(app, event_id: str) -> None:
    inbox = webhooks_of(app).inbox
    max_attempts = app.config["SETTINGS"].webhook_max_attempts
    now = time.time() + 1
    for _ in range(max_attempts):
        claim = inbox.claim_next(lease_seconds=30, now=now)
        assert claim is not None and claim.id == event_id
        retry_at = None if claim.attempts >= max_attempts else 0.0  # due before anything else
        inbox.fail(claim, "RuntimeError: boom", "Traceback (most recent call last):\n  boom", retry_at, now)


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def test_list_as_json_lines(runner, app):
    _store(app, 1)
    _store(app, "x-2", event="user.create")
    result = runner.invoke(args=["webhooks", "list", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["id"] for line in lines] == ["x-2", "1"]
    assert set(lines[0]) == {"company", "id", "event", "status", "attempts", "received_at", "last_error"}
    assert lines[0]["status"] == "received"
    assert lines[0]["received_at"].endswith("Z")


def test_list_filters_by_status_and_shows_a_table(runner, app):
    _store(app, 1)
    _store(app, 2)
    _fail_until_dead(app, "1")
    result = runner.invoke(args=["webhooks", "list", "--status", "dead"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:4] == ["RECEIVED", "COMPANY", "ID", "EVENT"]
    assert len(rows) == 1
    assert rows[0].split()[1:6] == [COMPANY, "1", "test.event", "dead", "8"]
    assert "RuntimeError: boom" in rows[0]
    assert runner.invoke(args=["webhooks", "list", "--status", "done"]).output == "No events.\n"
    assert runner.invoke(args=["webhooks", "list", "--status", "nonsense"]).exit_code == 2


def test_show_prints_the_row_with_data_error_and_traceback(runner, app):
    _store(app, 9, data={"amount": 1234})
    _fail_until_dead(app, "9")
    result = runner.invoke(args=["webhooks", "show", "9"])
    assert result.exit_code == 0, result.output
    assert "status: dead" in result.output
    assert "attempts: 8" in result.output
    assert '"amount": 1234' in result.output
    assert "last_error: RuntimeError: boom" in result.output
    assert "Traceback (most recent call last)" in result.output


def test_show_masks_codes_of_sensitive_events_unless_raw(runner, app):
    _store(app, 3, event="user.password.reset", data={"user": "u1", "reset_key": "k-secret-123"})
    masked = runner.invoke(args=["webhooks", "show", "3"])
    assert "k-secret-123" not in masked.output
    assert '"reset_key": "[redacted]"' in masked.output
    raw = runner.invoke(args=["webhooks", "show", "3", "--raw"])
    assert "k-secret-123" in raw.output


def test_show_an_id_used_by_two_companies_needs_company(runner, app):
    _store(app, 1, data={"who": "ours"})
    _store(app, 1, company="zeta", data={"who": "theirs"})
    ambiguous = runner.invoke(args=["webhooks", "show", "1"])
    assert ambiguous.exit_code == 1
    assert "several companies (acme, zeta)" in ambiguous.output
    chosen = runner.invoke(args=["webhooks", "show", "1", "--company", "zeta"])
    assert '"who": "theirs"' in chosen.output
    missing = runner.invoke(args=["webhooks", "show", "404"])
    assert missing.exit_code == 1
    assert "No stored event" in missing.output


def test_replay_puts_a_dead_event_back_and_it_is_processed(runner, app):
    runs = []
    webhooks_of(app).registry.on("test.event")(lambda event, client: runs.append(event.id))
    _store(app, 7)
    _fail_until_dead(app, "7")
    result = runner.invoke(args=["webhooks", "replay", "7"])
    assert result.exit_code == 0, result.output
    assert "Replayed acme/7 (test.event): dead -> received, attempts reset." in result.output
    [row] = webhooks_of(app).inbox.get("7")
    assert (row["status"], row["attempts"]) == ("received", 0)
    drained = runner.invoke(args=["webhooks", "work", "--drain", "--threads", "1"])
    assert drained.output == "Processed 1 event(s) with 1 thread(s).\n"
    assert runs == ["7"]
    assert webhooks_of(app).inbox.get("7")[0]["status"] == "done"


def test_work_drain_uses_its_threads_and_runs_each_event_once(runner, app):
    runs = []
    threads_seen = set()

    def record(event, client):
        runs.append(event.id)
        threads_seen.add(threading.get_ident())
        time.sleep(0.01)  # long enough for the other threads to claim their own events

    webhooks_of(app).registry.on("test.event")(record)
    for n in range(30):
        _store(app, n)
    drained = runner.invoke(args=["webhooks", "work", "--drain", "--threads", "3"])
    assert drained.output == "Processed 30 event(s) with 3 thread(s).\n"
    assert sorted(runs) == sorted(str(n) for n in range(30))
    assert len(threads_seen) == 3
    assert webhooks_of(app).inbox.counts() == {"done": 30}


def test_replay_a_done_event_runs_it_again(runner, app):
    runs = []
    webhooks_of(app).registry.on("test.event")(lambda event, client: runs.append(event.id))
    _store(app, 1)
    webhooks_of(app).pool.drain()
    assert "done -> received" in runner.invoke(args=["webhooks", "replay", "1"]).output
    webhooks_of(app).pool.drain()
    assert runs == ["1", "1"]


def test_replay_refuses_events_not_yet_processed(runner, app):
    _store(app, 1)
    result = runner.invoke(args=["webhooks", "replay", "1"])
    assert result.exit_code == 1
    assert "is received; only failed, dead or done events are replayed" in result.output


def test_replay_dead_replays_every_dead_event(runner, app):
    for n in (1, 2, 3):
        _store(app, n)
    _fail_until_dead(app, "1")
    _fail_until_dead(app, "2")
    result = runner.invoke(args=["webhooks", "replay", "--dead"])
    assert result.exit_code == 0, result.output
    assert "2 dead event(s) put back to received." in result.output
    assert webhooks_of(app).inbox.counts() == {"received": 3}


@pytest.mark.parametrize("args", [[], ["1", "--dead"]])
def test_replay_needs_an_id_or_dead(runner, args):
    assert runner.invoke(args=["webhooks", "replay", *args]).exit_code == 2


def test_cli_commands_do_not_start_workers(settings):
    """The Flask CLI builds the app for every command; only serving processes get threads."""
    apps = []

    def factory():
        app = create_app(settings.replace(webhook_worker="thread"))
        apps.append(app)
        return app

    cli = FlaskGroup(create_app=factory)
    result = CliRunner().invoke(cli, ["webhooks", "list"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert apps
    assert not any(webhooks_of(app).pool.running for app in apps)
    for app in apps:
        app.extensions["store"].shutdown()
