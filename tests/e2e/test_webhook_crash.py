"""Kill gunicorn (master and workers, SIGKILL) mid-processing; after a restart every event is done once."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
import requests

from devtools.processes import Process, listening_socket, service_env, start_service, wait_for
from devtools.stand_in import LOCAL_ADMIN_TOKEN

SECRET = "e2e-webhook-secret-0123456789abcdef"
COMPANY = "demo"  # the stand-in's company: each process checks the admin token against it first
EVENTS = 24
HANDLER_SECONDS = 0.3


@pytest.fixture
def servers():
    started: list[Process] = []
    yield started
    for server in started:
        server.stop()


def serve(env: dict[str, str], sock, log: Path) -> Process:
    """Start gunicorn serving the slow app, two workers, on the socket we keep across crashes."""
    return start_service(env, sock, workers=2, threads=4, app="tests.e2e.slow_app:create_app()", log_path=log)


def _rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute(sql).fetchall()


def test_events_survive_a_crash_and_are_done_exactly_once(tmp_path, servers, rehive):
    db = tmp_path / "inbox.sqlite3"
    log = tmp_path / "gunicorn.log"
    env = service_env(
        os.environ,
        REHIVE_ADMIN_TOKEN=LOCAL_ADMIN_TOKEN,
        REHIVE_WEBHOOK_SECRET=SECRET,
        REHIVE_COMPANY=COMPANY,
        REHIVE_API_URL=rehive.url + "/3/",  # only asked whose the admin token is; the handler never calls it
        DATABASE_PATH=str(db),
        WEBHOOK_WORKER="thread",
        WEBHOOK_WORKER_THREADS="2",
        WEBHOOK_LEASE_SECONDS="1.5",
        TRUSTED_PROXIES="0",
        SAVINGS_PERCENT="0",
    )
    sock = listening_socket()
    first = serve(env, sock, log)
    servers.append(first)
    session = requests.Session()
    headers = {"Authorization": f"Secret {SECRET}"}
    bodies = [
        {"id": n, "event": "test.slow", "company": COMPANY, "data": {"sleep": HANDLER_SECONDS}}
        for n in range(EVENTS)
    ]
    for body in bodies:
        response = session.post(first.url + "/webhooks/", json=body, headers=headers, timeout=5)
        assert response.status_code == 202, response.text

    def done_count() -> int:
        return _rows(db, "SELECT count(*) FROM webhook_events WHERE status = 'done'")[0][0]

    wait_for(lambda: done_count() >= 3, what="some events to be done")
    first.kill()

    before = dict(_rows(db, "SELECT id, status FROM webhook_events"))
    assert len(before) == EVENTS, "every acknowledged event was stored"
    assert set(before.values()) - {"done"}, "the crash came too late to interrupt anything"
    done_before = {event_id for event_id, status in before.items() if status == "done"}
    runs_before = Counter(event_id for (event_id,) in _rows(db, "SELECT id FROM runs"))

    second = serve(env, sock, log)  # the same port: Rehive's webhook URL does not change
    servers.append(second)
    wait_for(lambda: done_count() == EVENTS, timeout=30, what="every event to be done after the restart")

    # Rehive, having seen our crash, delivers again: each is a duplicate and nothing runs again.
    for body in bodies:
        assert (
            session.post(second.url + "/webhooks/", json=body, headers=headers, timeout=5).status_code == 200
        )
    session.close()

    statuses = Counter(status for (status,) in _rows(db, "SELECT status FROM webhook_events"))
    assert statuses == {"done": EVENTS}
    effects = Counter(event_id for (event_id,) in _rows(db, "SELECT id FROM side_effects"))
    assert effects == {str(n): 1 for n in range(EVENTS)}, "each event's side effect appears exactly once"
    runs = Counter(event_id for (event_id,) in _rows(db, "SELECT id FROM runs"))
    applied = Counter(event_id for (event_id,) in _rows(db, "SELECT id FROM runs WHERE applied = 1"))
    assert applied == effects
    for event_id in done_before:
        assert runs[event_id] == 1, f"event {event_id} was done before the crash and ran again"
    for event_id, count in runs.items():
        # Only a run killed between its side effect and its "done" may legitimately run twice.
        assert count == 1 or (before[event_id] == "processing" and count == 2 and runs_before[event_id] == 1)
