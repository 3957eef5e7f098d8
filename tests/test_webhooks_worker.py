"""Processing outside the request: claims, leases, retries with backoff, dead events, replay.

Runs on both stores (SQLite, and a real PostgreSQL), except where a test says otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter

import pytest
from responses import matchers

from app import create_app
from rehive_client import RehiveBadResponse, RehiveRequestError, RehiveTimeout, RehiveUnavailable
from store import Store, open_store
from tests.conftest import API, BACKENDS, COMPANY, WEBHOOK_SECRET, both_backends, webhook_body
from webhooks import Registry, WorkerPool, webhooks_of
from webhooks.worker import retry_delay

GOOD = {"Authorization": f"Secret {WEBHOOK_SECRET}"}
backend = pytest.fixture(params=BACKENDS)(both_backends)


@pytest.fixture(autouse=True)
def _apps_closed_after_the_test(apps, monkeypatch):
    # Every app a test builds here is shut down after it (a Postgres store holds a pool).
    monkeypatch.setattr(sys.modules[__name__], "create_app", apps)


@pytest.fixture
def second_store(settings):
    """Open more handles on the app's store, as other processes would have; closed after the test."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(settings.database_url))
        return opened[-1]

    yield open_one
    for handle in opened:
        handle.shutdown()


class Clock:
    """A clock the test moves by hand; it starts a little ahead, so rows stored now are due."""

    def __init__(self) -> None:
        self.now = time.time() + 1

    def __call__(self) -> float:
        return self.now


def _pool(app, clock=None, registry=None, inbox=None, threads=1) -> WorkerPool:
    state = webhooks_of(app)
    return WorkerPool(
        app, inbox or state.inbox, registry or state.registry, threads=threads, clock=clock or time.time
    )


def _store(inbox: Store, event_id: object, event: str = "test.event", data: dict | None = None) -> None:
    import json

    body = json.dumps(webhook_body(event_id=event_id, event=event, data=data))
    assert inbox.insert(COMPANY, str(event_id), event, body)


def _wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_retry_delay_doubles_up_to_the_maximum():
    assert [retry_delay(n, 5, 600) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]


def test_a_failing_handler_is_retried_with_backoff_then_dead_then_replayed(settings, caplog):
    settings = settings.replace(
        webhook_retry_first_seconds=5, webhook_retry_max_seconds=12, webhook_max_attempts=4
    )
    app = create_app(settings)
    state = webhooks_of(app)
    clock = Clock()
    pool = _pool(app, clock)
    calls = []
    broken = True

    @state.registry.on("test.event")
    def flaky(event, client):
        calls.append(clock.now)
        if broken:
            raise RuntimeError("Rehive said no")

    _store(state.inbox, 1)
    start = clock.now
    expected_due = [5, 10, 12]  # doubling from 5 s, capped at 12 s
    for attempt, delay in enumerate(expected_due, start=1):
        assert pool.process_one()
        [row] = state.inbox.get("1")
        assert (row["status"], row["attempts"]) == ("failed", attempt)
        assert row["due_at"] == pytest.approx(clock.now + delay)
        assert row["last_error"] == "RuntimeError: Rehive said no"
        assert "Traceback" in row["traceback"]
        assert "flaky" in row["traceback"]
        clock.now += delay - 0.01
        assert not pool.process_one(), "retried before its time"
        clock.now += 0.01

    assert pool.process_one()
    [row] = state.inbox.get("1")
    assert (row["status"], row["attempts"], row["due_at"]) == ("dead", 4, None)
    clock.now += 10_000
    assert not pool.process_one(), "a dead event is never retried by itself"
    assert [round(t - start, 2) for t in calls] == [0, 5, 15, 27]

    assert state.inbox.replay(COMPANY, "1") == "dead"
    [row] = state.inbox.get("1")
    assert (row["status"], row["attempts"]) == ("received", 0)
    broken = False
    assert pool.process_one()
    [row] = state.inbox.get("1")
    assert (row["status"], row["attempts"]) == ("done", 1)
    logged = [r.getMessage() for r in caplog.records if r.name == "webhooks"]
    assert sum("webhook failed" in line for line in logged) == 3
    assert sum("webhook dead" in line for line in logged) == 1
    assert sum("webhook done" in line for line in logged) == 1


def test_an_expired_lease_is_taken_again(app):
    state = webhooks_of(app)
    clock = Clock()
    runs = []
    state.registry.on("test.event")(lambda event, client: runs.append(event.id))
    _store(state.inbox, 5)
    # A worker claims the event and dies before settling it.
    dead_claim = state.inbox.claim_next(lease_seconds=30, now=clock.now)
    assert dead_claim is not None
    pool = _pool(app, clock)
    assert not pool.process_one(), "the lease is still held"
    clock.now += 30
    assert pool.process_one()
    [row] = state.inbox.get("5")
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert runs == ["5"]
    # The dead worker's late answer must not overwrite the result.
    assert not state.inbox.finish(dead_claim)
    assert state.inbox.fail(dead_claim, "late", "", retry_at=None) is None
    assert state.inbox.get("5")[0]["status"] == "done"


def test_a_worker_whose_lease_was_taken_cannot_mark_done(app):
    state = webhooks_of(app)
    _store(state.inbox, 6)
    now = time.time()
    slow = state.inbox.claim_next(lease_seconds=1, now=now)
    fast = state.inbox.claim_next(lease_seconds=1, now=now + 2)
    assert slow is not None and fast is not None and slow.lease_token != fast.lease_token
    assert state.inbox.fail(fast, "boom", "tb", retry_at=now + 100, now=now + 2) == "failed"
    assert not state.inbox.finish(slow, now=now + 3)
    assert state.inbox.get("6")[0]["status"] == "failed"


def test_an_event_whose_worker_keeps_dying_ends_dead(settings):
    app = create_app(settings.replace(webhook_max_attempts=2))
    state = webhooks_of(app)
    _store(state.inbox, 8)
    now = time.time()
    assert state.inbox.claim_next(lease_seconds=1, now=now)
    assert state.inbox.claim_next(lease_seconds=1, now=now + 2)
    clock = Clock()
    clock.now = now + 4
    assert _pool(app, clock).process_one()
    [row] = state.inbox.get("8")
    assert (row["status"], row["attempts"]) == ("dead", 2)
    assert "lease expired" in row["last_error"]


def test_received_failed_due_and_expired_events_are_all_processed_after_a_restart(settings):
    app = create_app(settings)
    inbox = webhooks_of(app).inbox
    for n in range(4):
        _store(inbox, n)
    now = time.time()
    assert inbox.claim_next(lease_seconds=1, now=now)  # 0: processing, lease expires
    failed = inbox.claim_next(lease_seconds=1, now=now)  # 1: failed, due
    inbox.fail(failed, "boom", "tb", retry_at=now + 1, now=now)
    later = inbox.claim_next(lease_seconds=1, now=now)  # 2: failed, not due yet
    inbox.fail(later, "boom", "tb", retry_at=now + 3600, now=now)

    restarted = create_app(settings)  # same database file, new process in all but name
    runs = []
    webhooks_of(restarted).registry.on("test.event")(lambda event, client: runs.append(event.id))
    clock = Clock()
    clock.now = now + 2
    assert _pool(restarted, clock).drain() == 3
    assert sorted(runs) == ["0", "1", "3"]
    assert webhooks_of(restarted).inbox.counts() == {"done": 3, "failed": 1}


def test_concurrent_workers_never_process_an_event_twice(settings, second_store):
    app = create_app(settings)
    events = 300
    for n in range(events):
        _store(webhooks_of(app).inbox, n)
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    registry = Registry()

    @registry.on("*")
    def count(event, client):
        with lock:
            seen[event.id] += 1

    # Two pools on two Inbox objects (separate connections), as two processes would have.
    pools = [_pool(app, registry=registry, inbox=second_store(), threads=4) for _ in range(2)]
    for pool in pools:
        pool.start()
    try:
        _wait_for(lambda: sum(seen.values()) >= events, what="every event to be processed")
        _wait_for(lambda: webhooks_of(app).inbox.counts() == {"done": events}, what="every row to be done")
    finally:
        for pool in pools:
            pool.stop()
    assert not any(pool.running for pool in pools)
    assert len(seen) == events
    assert set(seen.values()) == {1}


def test_thread_workers_process_new_events_promptly(settings):
    app = create_app(settings.replace(webhook_worker="thread", webhook_worker_threads=2))
    state = webhooks_of(app)
    done = threading.Event()
    state.registry.on("test.event")(lambda event, client: done.set())
    try:
        assert state.pool.running
        response = app.test_client().post("/webhooks/", headers=GOOD, json=webhook_body(event="test.event"))
        assert response.status_code == 202
        assert done.wait(10)
        _wait_for(lambda: state.inbox.counts() == {"done": 1}, what="the row to be done")
    finally:
        state.pool.stop()
    assert not state.pool.running


def test_off_means_no_threads(app):
    assert not webhooks_of(app).pool.running


def test_handlers_get_the_event_the_admin_client_and_an_app_context(app):
    from flask import current_app

    from rehive_client import admin

    state = webhooks_of(app)
    got = []

    @state.registry.on("test.event", "other.event")
    def handler(event, client):
        got.append((event, client, current_app.name))

    _store(state.inbox, "abc", data={"k": "v"})
    state.pool.drain()
    [(event, client, name)] = got
    assert (event.company, event.id, event.name, event.data) == (COMPANY, "abc", "test.event", {"k": "v"})
    assert client is admin.client(app)
    assert name == app.name


def test_every_handler_of_an_event_runs_in_order(app):
    state = webhooks_of(app)
    order = []
    state.registry.on("test.event")(lambda e, c: order.append("first"))
    state.registry.on("*")(lambda e, c: order.append("any"))
    state.registry.on("test.event")(lambda e, c: order.append("second"))
    _store(state.inbox, 1)
    state.pool.drain()
    assert order == ["first", "second", "any"]


def test_failure_logs_of_sensitive_events_carry_no_data(app, caplog):
    caplog.set_level(logging.INFO, logger="webhooks")
    state = webhooks_of(app)

    @state.registry.on("user.password.reset", "transaction.create")
    def leaky(event, client):
        raise ValueError(f"bad key {event.data['key']}")

    _store(state.inbox, 1, "user.password.reset", {"key": "reset-key-123456"})
    _store(state.inbox, 2, "transaction.create", {"key": "ordinary"})
    state.pool.drain()
    assert "reset-key-123456" not in caplog.text
    [sensitive] = [r.getMessage() for r in caplog.records if "id='1'" in r.getMessage()]
    assert sensitive.endswith("error=ValueError")
    assert "bad key ordinary" in caplog.text  # non-sensitive events keep the message
    # The row keeps the full error, for `flask webhooks show`.
    assert "reset-key-123456" in state.inbox.get("1")[0]["last_error"]


def test_a_broken_row_fails_without_killing_the_worker(app):
    state = webhooks_of(app)
    assert state.inbox.insert(COMPANY, "bad", "test.event", "not json")
    assert state.pool.process_one()
    [row] = state.inbox.get("bad")
    assert row["status"] == "failed"
    assert row["last_error"].startswith("JSONDecodeError")


@pytest.mark.parametrize("backend", ["sqlite"])  # SQLite's own settings
def test_the_inbox_is_wal_and_fsyncs_every_stored_delivery(inbox):
    conn = inbox.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    inbox.claim_next(lease_seconds=1)  # bookkeeping: committed without waiting for the disk
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    _store(inbox, 1)  # a delivery: fsync'd before insert returns
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_live_worker_keeps_its_lease_while_a_handler_outlasts_it(settings, second_store):
    lease = 0.3
    app = create_app(settings.replace(webhook_lease_seconds=lease))
    _store(webhooks_of(app).inbox, "slow")
    runs: Counter[str] = Counter()
    registry = Registry()

    @registry.on("*")
    def slow(event, client):
        runs[event.id] += 1
        time.sleep(lease * 5)

    # Two pools, as two processes would have: the second must never take over the running event.
    pools = [_pool(app, registry=registry, inbox=second_store()) for _ in range(2)]
    for pool in pools:
        pool.start()
    try:
        _wait_for(lambda: webhooks_of(app).inbox.counts() == {"done": 1}, what="the event to be done")
    finally:
        for pool in pools:
            pool.stop()
    assert runs == {"slow": 1}
    assert webhooks_of(app).inbox.get("slow")[0]["attempts"] == 1


def test_a_lost_lease_cannot_be_renewed(app):
    inbox = webhooks_of(app).inbox
    _store(inbox, 1)
    now = time.time() + 1
    first = inbox.claim_next(lease_seconds=1, now=now)
    assert inbox.renew(first, lease_seconds=1, now=now + 0.5)
    second = inbox.claim_next(lease_seconds=1, now=now + 2)  # the renewed lease ran out at now + 1.5
    assert second is not None
    assert not inbox.renew(first, lease_seconds=1, now=now + 2.1)


# -- Rehive's trouble is not the event's: throttling, outages and timeouts use up no attempt ----------


def test_an_event_throttled_three_times_then_done_used_one_attempt(settings, rsps):
    app = create_app(settings.replace(webhook_max_attempts=2))
    state = webhooks_of(app)
    clock = Clock()
    pool = _pool(app, clock)

    @state.registry.on("test.event")
    def call_rehive(event, client):
        client.post("admin/things/", {"n": 1}, idempotency_key="acme:1:thing")

    throttled = {"status": "error", "message": "Request was throttled. Expected available in 7 seconds."}
    key = [matchers.header_matcher({"Idempotency-Key": "acme:1:thing"})]
    rsps.post(API + "admin/things/", status=429, json=throttled, headers={"Retry-After": "7"}, match=key)
    rsps.post(API + "admin/things/", status=429, json=throttled, match=key)
    rsps.post(API + "admin/things/", status=429, json=throttled, headers={"Retry-After": "99999"}, match=key)
    rsps.post(API + "admin/things/", status=201, json={"status": "success", "data": {}}, match=key)
    _store(state.inbox, 1)

    # Rehive's Retry-After when given (capped at WEBHOOK_RETRY_MAX_SECONDS), else the growing backoff.
    for delay in (7, 10, settings.webhook_retry_max_seconds):
        assert pool.process_one()
        [row] = state.inbox.get("1")
        assert (row["status"], row["attempts"]) == ("failed", 0)
        assert row["due_at"] == pytest.approx(clock.now + delay)
        assert row["last_error"].startswith("RehiveRateLimited: Request was throttled")
        assert "not counted as an attempt: Rehive is throttling us" in row["last_error"]
        clock.now += delay
    assert pool.process_one()
    [row] = state.inbox.get("1")
    assert (row["status"], row["attempts"]) == ("done", 1)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RehiveUnavailable("Rehive answered 503: x/", status=503), id="5xx"),
        pytest.param(RehiveUnavailable("Rehive is unreachable: x/"), id="connection"),
        pytest.param(RehiveTimeout("Rehive did not answer in time: x/"), id="timeout"),
    ],
)
def test_an_outage_that_never_ends_never_makes_an_event_dead(settings, error, caplog):
    app = create_app(settings.replace(webhook_max_attempts=2, webhook_retry_max_seconds=60))
    state = webhooks_of(app)
    clock = Clock()
    pool = _pool(app, clock)

    @state.registry.on("test.event")
    def down(event, client):
        raise error

    _store(state.inbox, 1)
    delays = []
    for _ in range(12):
        before = clock.now
        assert pool.process_one()
        [row] = state.inbox.get("1")
        assert (row["status"], row["attempts"]) == ("failed", 0)
        assert "not counted as an attempt: Rehive" in row["last_error"]
        delays.append(round(row["due_at"] - before))
        clock.now = row["due_at"]
    assert delays == [5, 10, 20, 40, 60, 60, 60, 60, 60, 60, 60, 60]
    assert "webhook dead" not in caplog.text
    assert "webhook deferred" in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RuntimeError("a bug"), id="plain exception"),
        pytest.param(
            RehiveRequestError("Insufficient balance.", status=400), id="Rehive refused the request"
        ),
        pytest.param(RehiveBadResponse("not JSON"), id="Rehive's answer makes no sense"),
    ],
)
def test_failures_of_the_events_own_making_still_end_dead(settings, error):
    app = create_app(settings.replace(webhook_max_attempts=3))
    state = webhooks_of(app)
    clock = Clock()
    pool = _pool(app, clock)
    outage = [True]

    @state.registry.on("test.event")
    def handler(event, client):
        if outage[0]:  # an outage first: it must neither count nor reset what counts
            outage[0] = False
            raise RehiveUnavailable("Rehive answered 502: x/", status=502)
        raise error

    _store(state.inbox, 1)
    for _ in range(4):
        assert pool.process_one()
        clock.now += 10_000
    [row] = state.inbox.get("1")
    assert (row["status"], row["attempts"]) == ("dead", 3)
    assert row["last_error"].startswith(type(error).__name__)


def test_an_uncounted_failure_gives_the_attempt_back(app):
    inbox = webhooks_of(app).inbox
    _store(inbox, 1)
    now = time.time()
    claim = inbox.claim_next(lease_seconds=30, now=now)
    assert claim.attempts == 1
    assert inbox.fail(claim, "throttled", "tb", retry_at=now + 5, now=now, count_attempt=False) == "failed"
    assert inbox.get("1")[0]["attempts"] == 0
    claim = inbox.claim_next(lease_seconds=30, now=now + 5)
    with pytest.raises(ValueError, match="must be retried"):
        inbox.fail(claim, "throttled", "tb", retry_at=None, count_attempt=False)


def test_a_busy_worker_settles_each_event_and_claims_the_next_in_one_write(settings, monkeypatch):
    app = create_app(settings)
    inbox = webhooks_of(app).inbox
    for n in range(40):
        _store(inbox, n)
    runs = []
    webhooks_of(app).registry.on("test.event")(lambda event, client: runs.append(event.id))
    calls: Counter[str] = Counter()
    for name in ("claim_next", "finish", "finish_and_claim"):
        original = getattr(inbox, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(inbox, name, counted)
    assert _pool(app).drain() == 40
    assert sorted(runs, key=int) == [str(n) for n in range(40)]
    assert inbox.counts() == {"done": 40}
    # Chains of at most CHAIN_LIMIT (16): 16 + 16 + 8 events; a full chain ends with a plain finish.
    assert calls["finish_and_claim"] == 15 + 15 + 8
    if inbox.backend == "sqlite":  # PostgreSQL's finish_and_claim is its finish, then its claim_next
        assert calls == {"claim_next": 3, "finish_and_claim": 15 + 15 + 8, "finish": 2}
