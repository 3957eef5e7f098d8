"""The PostgreSQL store's own promises: wake-ups through LISTEN/NOTIFY, polling only behind PgBouncer,
and a password that never shows."""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import psycopg
import pytest

from settings import ConfigError, load_settings
from store import open_store
from store.postgres import PostgresStore

PASSWORD = "canary-db-password-0123"
MINIMAL = {"REHIVE_ADMIN_TOKEN": "t", "REHIVE_WEBHOOK_SECRET": "s"}


def _with_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"postgres:{PASSWORD}@{parts.hostname}:{parts.port}").geturl()


@pytest.fixture
def stores():
    opened = []

    def open_one(url: str, **kwargs) -> PostgresStore:
        opened.append(open_store(url, **kwargs))
        opened[-1].upgrade()
        return opened[-1]

    yield open_one
    for store in opened:
        store.shutdown()


class Wakes:
    """Counts wake() calls and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_beyond(self, count: int, timeout: float = 10) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count > count, timeout)


def _listener_pids(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
        ).fetchall()
    return [pid for (pid,) in rows]


def _wait(condition, timeout: float = 10) -> bool:
    event = threading.Event()
    while not condition():
        if not event.wait(0.02) and timeout <= 0:
            return False
        timeout -= 0.02
    return True


def test_another_process_storing_an_event_wakes_the_listener_also_after_a_reconnect(postgres_url, stores):
    listening = stores(postgres_url)
    sender = stores(postgres_url)
    wakes = Wakes()
    listening.listen(wakes)
    assert wakes.wait_beyond(0)  # one wake-up on (re)connecting: events may have come meanwhile
    assert _wait(lambda: len(_listener_pids(postgres_url)) == 1)
    seen = wakes.count
    assert sender.insert("acme", "1", "e", "{}")
    assert wakes.wait_beyond(seen)

    # The listener's connection dies (a failover, an idle timeout): it connects and LISTENs again.
    [pid] = _listener_pids(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert _wait(lambda: _listener_pids(postgres_url) not in ([], [pid]))
    seen = wakes.count
    assert sender.insert("acme", "2", "e", "{}")
    assert wakes.wait_beyond(seen)


def test_notifications_are_held_to_one_per_interval_and_the_last_is_sent_late(postgres_url, stores):
    listening = stores(postgres_url)
    sender = stores(postgres_url)
    wakes = Wakes()
    listening.listen(wakes)
    assert wakes.wait_beyond(0)
    with psycopg.connect(postgres_url, autocommit=True) as watcher:
        watcher.execute("LISTEN webhook_events")
        for n in range(50):
            sender.insert("acme", str(n), "e", "{}")
        notifies = list(watcher.notifies(timeout=1.0))
        # A pair: the first notifies at once, the second is held back, then sent when the interval ends.
        sender.insert("acme", "pair-1", "e", "{}")
        sender.insert("acme", "pair-2", "e", "{}")
        pair = list(watcher.notifies(timeout=1.0))
    assert 2 <= len(notifies) < 50
    assert len(pair) == 2


def test_listen_off_means_no_listener_no_notify_and_no_prepared_statements(postgres_url, stores):
    store = stores(postgres_url, listen=False)
    store.listen(lambda: None)
    assert store._kwargs["prepare_threshold"] is None
    with psycopg.connect(postgres_url, autocommit=True) as watcher:
        watcher.execute("LISTEN webhook_events")
        for n in range(10):
            assert store.insert("acme", str(n), "e", "{}")
        assert list(watcher.notifies(timeout=0.3)) == []
    assert _listener_pids(postgres_url) == []
    assert store.counts() == {"received": 10}


def test_the_password_never_shows_in_repr_logs_or_errors(postgres_url, stores, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    url = _with_password(postgres_url)  # the test cluster trusts loopback, so any password works
    store = stores(url)
    assert store.insert("acme", "1", "e", "{}")
    assert PASSWORD not in repr(store)
    assert "***" in repr(store)
    settings = load_settings({**MINIMAL, "DATABASE_URL": url})
    assert PASSWORD not in repr(settings)
    with pytest.raises(ConfigError) as bad_scheme:
        load_settings(
            {"REHIVE_ADMIN_TOKEN": "t", "REHIVE_WEBHOOK_SECRET": "s", "DATABASE_URL": "mysql" + url[10:]}
        )
    assert "'mysql'" in str(bad_scheme.value)
    assert PASSWORD not in str(bad_scheme.value)
    with pytest.raises(ConfigError) as no_db:
        load_settings(
            {"REHIVE_ADMIN_TOKEN": "t", "REHIVE_WEBHOOK_SECRET": "s", "DATABASE_URL": url.rsplit("/", 1)[0]}
        )
    assert PASSWORD not in str(no_db.value)
    assert PASSWORD not in caplog.text


def test_query_parameters_pass_through(postgres_url, stores):
    store = stores(postgres_url + "?application_name=rehive-inbox&sslmode=disable")
    with store._conn() as conn:
        assert (
            conn.execute("SELECT current_setting('application_name') AS n").fetchone()["n"] == "rehive-inbox"
        )


def test_the_pool_is_capped_per_process(postgres_url, stores):
    store = stores(postgres_url, pool_size=3)
    assert store._pool.max_size == 3
    barrier = threading.Barrier(12)

    def insert(n: int) -> None:
        barrier.wait()
        store.insert("acme", str(n), "e", "{}")

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.counts() == {"received": 12}
    assert store._pool.get_stats()["pool_size"] <= 3


def test_a_delivery_is_committed_with_synchronous_commit_on_whatever_the_default(postgres_url, stores):
    from store.postgres import INSERT

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {urlsplit(postgres_url).path.strip('/')} SET synchronous_commit = off")
    store = stores(postgres_url)
    assert store.insert("acme", "1", "e", "{}")
    # The same statement inside a transaction we can look into: it turns synchronous_commit on for it.
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
        conn.execute(INSERT, ("acme", "2", "e", "{}", 1.0, 1.0, 1.0))
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        conn.rollback()
    assert store.get("1")[0]["status"] == "received"
