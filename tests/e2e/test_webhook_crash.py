"""Kill gunicorn (master and workers, SIGKILL) mid-processing; after a restart every event is done once."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing, suppress
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-webhook-secret-0123456789abcdef"
COMPANY = "acme"
EVENTS = 24
HANDLER_SECONDS = 0.3


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 30.0, log: Path | None = None):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.02)


class Gunicorn:
    """A real gunicorn serving the slow app, in its own process group so it can be killed whole."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "gthread",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{self.port}",
            "tests.e2e.slow_app:create_app()",
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.process.returncode}\n{self.log.read_text()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL the master and its workers at once, as a crash or the OOM killer would."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def servers():
    started: list[Gunicorn] = []
    yield started
    for server in started:
        server.kill()


def _rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute(sql).fetchall()


def test_events_survive_a_crash_and_are_done_exactly_once(tmp_path, servers):
    db = tmp_path / "inbox.sqlite3"
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "REHIVE_ADMIN_TOKEN": "e2e-admin-token",
        "REHIVE_WEBHOOK_SECRET": SECRET,
        "REHIVE_WEBHOOK_SECRET_PREVIOUS": "",
        "REHIVE_COMPANY": COMPANY,
        "REHIVE_API_URL": "http://127.0.0.1:9/3/",  # nothing listens: the handler never calls Rehive
        "DATABASE_PATH": str(db),
        "WEBHOOK_WORKER": "thread",
        "WEBHOOK_WORKER_THREADS": "2",
        "WEBHOOK_LEASE_SECONDS": "1.5",
        "WEBHOOK_ALLOWED_IPS": "",  # set, even empty, so a developer's .env cannot change the test
        "TRUSTED_PROXIES": "0",
        "SAVINGS_PERCENT": "0",
        "PYTHONUNBUFFERED": "1",
    }

    first = Gunicorn(env, log)
    servers.append(first)
    wait_for(first.healthy, "the first server to start", log=log)
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

    wait_for(lambda: done_count() >= 3, "some events to be done", log=log)
    first.kill()

    before = dict(_rows(db, "SELECT id, status FROM webhook_events"))
    assert len(before) == EVENTS, "every acknowledged event was stored"
    assert set(before.values()) - {"done"}, "the crash came too late to interrupt anything"
    done_before = {event_id for event_id, status in before.items() if status == "done"}
    runs_before = Counter(event_id for (event_id,) in _rows(db, "SELECT id FROM runs"))

    second = Gunicorn(env, log)
    servers.append(second)
    wait_for(second.healthy, "the second server to start", log=log)
    wait_for(lambda: done_count() == EVENTS, "every event to be done after the restart", log=log)

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
