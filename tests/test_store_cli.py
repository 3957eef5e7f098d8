"""`flask db upgrade|status|copy`, `flask webhooks prune`, and retention by the workers (on both stores)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from store import migrations, open_store
from tests.conftest import BACKENDS, both_backends
from webhooks import webhooks_of

backend = pytest.fixture(params=BACKENDS)(both_backends)
DAY = 86_400.0


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def _settled(store, event_id: str, status: str, at: float, attempts: int = 1) -> None:
    """Store an event and bring it to `status` at time `at`, after `attempts` attempts."""
    assert store.insert("acme", event_id, "e", '{"data": {}}', now=at)
    for attempt in range(1, attempts + 1):
        claim = store.claim_next(30, now=at)
        assert claim is not None and claim.id == event_id
        if status == "done" and attempt == attempts:
            assert store.finish(claim, now=at)
        elif status == "processing" and attempt == attempts:
            pass
        else:
            last = attempt == attempts
            retry_at = None if (status == "dead" and last) else (at + 3600 if last else at)
            store.fail(claim, "boom", "tb", retry_at, now=at)


def test_db_status_prints_the_version_and_counts_by_state(runner, app, backend):
    store = webhooks_of(app).inbox
    _settled(store, "1", "done", time.time())
    _settled(store, "2", "dead", time.time())
    store.insert("acme", "3", "e", "{}")
    result = runner.invoke(args=["db", "status"])
    assert result.exit_code == 0, result.output
    newest = len(migrations(backend))
    assert f"store: {backend}\nschema version: {newest} (newest {newest})\n" in result.output
    assert "received: 1\nprocessing: 0\ndone: 1\nfailed: 0\ndead: 1\n" in result.output


def test_db_upgrade_when_current_does_nothing(runner, backend):
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output


@pytest.mark.parametrize("backend", ["sqlite"])  # moving off SQLite
def test_db_copy_to_postgres_copies_every_row_once_and_hides_the_password(runner, app, postgres_url):
    store = webhooks_of(app).inbox
    now = time.time()
    _settled(store, "done", "done", now - 3)
    _settled(store, "failed", "failed", now - 2, attempts=2)
    _settled(store, "dead", "dead", now - 1, attempts=3)
    _settled(store, "processing", "processing", now)
    store.insert("acme", "received", "e", "{}")
    parts = urlsplit(postgres_url)
    target_url = parts._replace(netloc=f"postgres:canary-pw@{parts.hostname}:{parts.port}").geturl()

    first = runner.invoke(args=["db", "copy", "--to", target_url])
    assert first.exit_code == 0, first.output
    assert "Copied 5 event(s)" in first.output
    assert "canary-pw" not in first.output and "***" in first.output
    again = runner.invoke(args=["db", "copy", "--to", target_url])
    assert "Copied 0 event(s)" in again.output and "5 were already there" in again.output

    target = open_store(postgres_url)
    try:
        copied = {row["id"]: row for row in target.export_rows(0, 100)}
        for row in store.export_rows(0, 100):
            assert {k: v for k, v in copied[row["id"]].items() if k != "seq"} == {
                k: v for k, v in row.items() if k != "seq"
            }
        assert target.counts() == store.counts()
    finally:
        target.shutdown()


def test_db_copy_refuses_an_unknown_store(runner):
    result = runner.invoke(args=["db", "copy", "--to", "mysql://u:canary-pw@h/db"])
    assert result.exit_code == 2
    assert "'mysql'" in result.output and "canary-pw" not in result.output


def test_prune_dead_deletes_only_dead_events_older_than_asked(runner, app):
    store = webhooks_of(app).inbox
    now = time.time()
    _settled(store, "old-dead", "dead", now - 31 * DAY)
    _settled(store, "new-dead", "dead", now - 29 * DAY)
    _settled(store, "old-done", "done", now - 31 * DAY)
    result = runner.invoke(args=["webhooks", "prune", "--dead", "--older-than", "30d"])
    assert result.exit_code == 0, result.output
    assert "Deleted 1 dead event(s) older than 30d." in result.output
    assert sorted(row["id"] for row in store.list_events()) == ["new-dead", "old-done"]


@pytest.mark.parametrize("args", [["--older-than", "30d"], ["--dead", "--older-than", "30"], ["--dead"]])
def test_prune_needs_dead_and_an_age(runner, args):
    assert runner.invoke(args=["webhooks", "prune", *args]).exit_code == 2


def test_workers_delete_done_events_past_retention_once_per_period(app, settings):
    from webhooks import WorkerPool

    state = webhooks_of(app)
    now = time.time()
    _settled(state.inbox, "old", "done", now - 31 * DAY)
    _settled(state.inbox, "recent", "done", now - 29 * DAY)
    _settled(state.inbox, "old-dead", "dead", now - 31 * DAY)
    _settled(state.inbox, "old-failed", "failed", now - 31 * DAY)
    pool = WorkerPool(app, state.inbox, state.registry, threads=1)
    assert pool.prune_if_due() == 1
    assert sorted(row["id"] for row in state.inbox.list_events()) == ["old-dead", "old-failed", "recent"]
    _settled(state.inbox, "old-2", "done", now - 31 * DAY)
    other = WorkerPool(app, state.inbox, state.registry, threads=1)  # another process, same hour
    assert other.prune_if_due() == 0
    assert state.inbox.get("old-2")
