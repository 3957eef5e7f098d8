"""The SQLite store's own promises: private files, bounded lock waits, upgrading today's files in place."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from app import create_app
from store import migrations, open_store
from tests.conftest import WEBHOOK_SECRET, webhook_body

GOOD = {"Authorization": f"Secret {WEBHOOK_SECRET}"}

# The schema exactly as the release before schema versions created it (webhooks/inbox.py's SCHEMA).
TODAYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    company     TEXT NOT NULL,
    id          TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'received'
                CHECK (status IN ('received', 'processing', 'done', 'failed', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      REAL,
    lease_token TEXT,
    last_error  TEXT,
    traceback   TEXT,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    done_at     REAL,
    UNIQUE (company, id)
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_events_status ON webhook_events (status, seq);
"""
TODAYS_ROWS = [
    # company, id, event, body, status, attempts, due_at, lease_token, last_error, received_at, done_at
    ("acme", "1", "e", '{"data": {}}', "done", 1, None, None, None, 100.0, 101.0),
    ("acme", "2", "e", '{"data": {}}', "failed", 2, 500.0, None, "boom", 102.0, None),
    ("acme", "3", "e", '{"data": {}}', "dead", 8, None, None, "boom", 103.0, None),
    ("acme", "4", "e", '{"data": {}}', "processing", 1, 200.0, "tok", None, 104.0, None),
    ("acme", "5", "e", '{"data": {}}', "received", 0, 105.0, None, None, 105.0, None),
    ("other", "1", "e", '{"data": {}}', "received", 0, 106.0, None, None, 106.0, None),
]


def _todays_file(path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(TODAYS_SCHEMA)
        conn.executemany(
            "INSERT INTO webhook_events (company, id, event, body, status, attempts, due_at, lease_token,"
            " last_error, received_at, updated_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            TODAYS_ROWS,
        )
        conn.commit()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def made_apps():
    built = []
    yield built
    for app in built:
        app.extensions["store"].shutdown()


def test_a_file_made_by_the_release_before_versions_upgrades_in_place_losing_no_row(settings, made_apps):
    _todays_file(settings.database_path)
    app = create_app(settings.replace(database_url=""))  # DATABASE_PATH, as that release was configured
    made_apps.append(app)
    store = app.extensions["store"]
    assert store.schema_version() == len(migrations("sqlite"))
    rows = {(row["company"], row["id"]): row for row in store.export_rows(0, 100)}
    assert len(rows) == len(TODAYS_ROWS)
    names = ("company", "id", "event", "body", "status", "attempts", "due_at", "lease_token", "last_error")
    for old in TODAYS_ROWS:
        row = rows[(old[0], old[1])]
        assert tuple(row[name] for name in names) == old[:9]
        assert (row["received_at"], row["done_at"]) == old[9:]
    assert store.oldest_unfinished() == 102.0
    assert store.acquire_periodic("job", 60)
    store.probe_write()
    assert store.insert("acme", "1", "e", "{}") is False  # the old rows still decide "once"
    assert store.claim_next(30, now=1_000).id == "5"  # the earliest due_at


def test_files_are_private_whatever_the_umask(tmp_path, settings, made_apps):
    path = tmp_path / "new-folder" / "inbox.sqlite3"
    old = os.umask(0o022)
    try:
        app = create_app(settings.replace(database_url="sqlite:///" + str(path)))
        made_apps.append(app)
        assert app.test_client().post("/webhooks/", headers=GOOD, json=webhook_body()).status_code == 202
    finally:
        os.umask(old)
    assert _mode(path.parent) == 0o700
    for name in ("inbox.sqlite3", "inbox.sqlite3-wal", "inbox.sqlite3-shm", "inbox.sqlite3.lock"):
        assert _mode(path.parent / name) == 0o600, name


def test_files_readable_by_others_are_tightened_at_start_and_logged(tmp_path, caplog):
    path = tmp_path / "inbox.sqlite3"
    _todays_file(path)
    (tmp_path / "inbox.sqlite3.lock").touch()
    for name in ("inbox.sqlite3", "inbox.sqlite3.lock"):
        os.chmod(tmp_path / name, 0o644)
    caplog.set_level(logging.WARNING)
    store = open_store("sqlite:///" + str(path))
    store.upgrade()
    store.shutdown()
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "inbox.sqlite3.lock") == 0o600
    assert "inbox.sqlite3 was mode 644 (readable by others); tightened to 0600" in caplog.text


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def _post_in_thread(client, answers: list, event_id: int) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: answers.append(client.post("/webhooks/", headers=GOOD, json=webhook_body(event_id))),
        daemon=True,
    )
    thread.start()
    return thread


def test_a_lock_held_by_another_process_is_a_503_within_5_s_and_nothing_is_stored(app, settings, inbox):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, settings.database_path + ".lock"], stdout=subprocess.PIPE, text=True
    )
    answers: list = []
    try:
        assert holder.stdout.readline().strip() == "held"
        thread = _post_in_thread(app.test_client(), answers, 1)
        thread.join(timeout=5)  # Rehive gives up after 5 s: an answer must come before
        finished = not thread.is_alive()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert finished, "no answer within 5 s while another process held the lock"
    thread.join()
    [refused] = answers
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert inbox.list_events() == []
    assert app.test_client().post("/webhooks/", headers=GOOD, json=webhook_body(2)).status_code == 202
    assert [row["id"] for row in inbox.list_events()] == ["2"]


def test_a_lock_held_by_another_thread_is_a_503_within_5_s_and_nothing_is_stored(app, inbox):
    answers: list = []
    with inbox._writing():  # e.g. a replay stuck in this process
        thread = _post_in_thread(app.test_client(), answers, 1)
        thread.join(timeout=5)
        finished = not thread.is_alive()
    thread.join()
    assert finished, "no answer within 5 s while another thread held the lock"
    assert answers[0].status_code == 503
    assert inbox.list_events() == []


def _steps_to_claim(tmp_path, done_rows: int) -> int:
    """Return how many SQLite VM steps has_due + claim_next take with `done_rows` done rows stored."""
    store = open_store(f"sqlite:///{tmp_path / f'history-{done_rows}.sqlite3'}")
    store.upgrade()
    conn = store.connection()
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO webhook_events (company, id, event, body, status, received_at, updated_at, done_at)"
        " SELECT 'acme', 'old-' || i, 'transaction.create', '{}', 'done', 1, 1, 1 FROM n",
        (done_rows,),
    )
    store.insert("acme", "new", "transaction.create", "{}", now=100.0)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 1)
    assert store.has_due(200.0, company="acme")
    claim = store.claim_next(30.0, 200.0, company="acme")
    conn.set_progress_handler(None, 1)
    assert claim is not None and claim.id == "new"
    store.shutdown()
    return steps[0]


def test_a_claim_costs_the_same_whatever_the_history(tmp_path):
    # Done rows have no due_at: the claim must go through the partial due index, never walk them.
    assert _steps_to_claim(tmp_path, 20_000) <= _steps_to_claim(tmp_path, 10) + 50
