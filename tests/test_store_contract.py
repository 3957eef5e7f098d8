"""The store's contract, written once and run against both backends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections import Counter

import pytest

from devtools.processes import ROOT
from store import STATUSES, Claim, StoreUnavailable, migrations, open_store
from tests.conftest import BACKENDS, both_backends

backend = pytest.fixture(params=BACKENDS)(both_backends)
NOW = 1_900_000_000.0  # a fixed clock: every time below is relative to it


@pytest.fixture
def store(database_url):
    opened = open_store(database_url)
    opened.upgrade()
    yield opened
    opened.shutdown()


@pytest.fixture
def other(database_url):
    """A second handle on the same store, as another process would have."""
    opened = open_store(database_url)
    yield opened
    opened.shutdown()


def _insert(store, *ids: str, company: str = "acme", at: float = NOW) -> None:
    for event_id in ids:
        assert store.insert(company, event_id, "test.event", '{"data": {}}', now=at)


def _claim(store, at: float = NOW, lease: float = 30) -> Claim:
    claim = store.claim_next(lease, now=at)
    assert claim is not None
    return claim


def test_the_schema_is_created_at_the_newest_version_and_upgrading_again_changes_nothing(store):
    newest = len(migrations(store.backend))
    assert newest >= 2
    assert store.schema_version() == newest
    assert store.upgrade() == (newest, newest)


def test_insert_stores_once_per_company_and_id(store):
    assert store.insert("acme", "1", "e", "{}", now=NOW) is True
    assert store.insert("acme", "1", "other.event", "{}", now=NOW) is False
    assert store.insert("other", "1", "e", "{}", now=NOW) is True
    assert store.counts() == {"received": 2}
    [row] = store.get("1", "acme")
    assert (row["event"], row["status"], row["attempts"], row["received_at"]) == ("e", "received", 0, NOW)


def test_claims_take_the_oldest_due_row_and_count_an_attempt(store):
    _insert(store, "a", at=NOW)
    _insert(store, "b", at=NOW + 1)
    assert not store.has_due(NOW - 1)
    assert store.claim_next(30, now=NOW - 1) is None  # nothing due yet
    assert store.has_due(NOW)
    first = _claim(store, at=NOW + 2)
    second = _claim(store, at=NOW + 2)
    assert (first.id, first.attempts, second.id) == ("a", 1, "b")
    assert first.lease_token != second.lease_token
    assert store.claim_next(30, now=NOW + 2) is None  # both leased
    assert store.counts() == {"processing": 2}


def test_an_expired_lease_is_claimed_again_and_the_old_holder_can_settle_nothing(store):
    _insert(store, "a")
    old = _claim(store, lease=10)
    assert store.renew(old, 10, now=NOW + 5)  # now leased until NOW + 15
    assert store.claim_next(10, now=NOW + 14) is None
    new = _claim(store, at=NOW + 16, lease=10)
    assert new.attempts == 2
    assert not store.renew(old, 10, now=NOW + 17)
    assert not store.finish(old, now=NOW + 17)
    assert store.fail(old, "late", "tb", retry_at=None, now=NOW + 17) is None
    assert store.finish(new, now=NOW + 18)
    [row] = store.get("a")
    assert (row["status"], row["done_at"], row["due_at"], row["lease_token"]) == (
        "done",
        NOW + 18,
        None,
        None,
    )


def test_fail_schedules_a_retry_or_buries_and_keeps_error_and_traceback(store):
    _insert(store, "a", "b")
    a, b = _claim(store), _claim(store)
    assert store.fail(a, "E" * 5_000, "tb-" + "x" * 30_000, retry_at=NOW + 60, now=NOW) == "failed"
    assert store.fail(b, "boom", "tb", retry_at=None, now=NOW) == "dead"
    [row] = store.get("a")
    assert (row["status"], row["attempts"], row["due_at"]) == ("failed", 1, NOW + 60)
    assert len(row["last_error"]) == 1_000
    assert len(row["traceback"]) == 20_000 and row["traceback"].endswith("x")
    assert store.claim_next(30, now=NOW + 59) is None
    assert _claim(store, at=NOW + 60).attempts == 2
    assert store.get("b")[0]["due_at"] is None


def test_fail_without_counting_gives_the_attempt_back(store):
    _insert(store, "a")
    claim = _claim(store)
    assert store.fail(claim, "RehiveThrottled: 429", "tb", NOW + 5, now=NOW, count_attempt=False) == "failed"
    [row] = store.get("a")
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", 0, "RehiveThrottled: 429")
    again = _claim(store, at=NOW + 5)
    assert again.attempts == 1
    assert store.fail(again, "boom", "tb", NOW + 10, now=NOW + 5) == "failed"
    assert store.get("a")[0]["attempts"] == 1


def test_bury_expired_buries_only_leases_that_ran_out_on_the_last_attempt(store):
    _insert(store, "last", "early")
    last, _early = _claim(store, lease=5), _claim(store, lease=5)
    assert store.bury_expired(max_attempts=2, now=NOW + 10) == []
    assert store.fail(last, "x", "", NOW, now=NOW) == "failed"
    assert _claim(store, at=NOW, lease=5).attempts == 2
    buried = store.bury_expired(max_attempts=2, now=NOW + 10)
    assert [(row["id"], row["attempts"]) for row in buried] == [("last", 2)]
    assert "lease expired" in store.get("last")[0]["last_error"]
    assert store.get("early")[0]["status"] == "processing"


def test_replay_and_replay_dead(store):
    _insert(store, "dead", "done", "new")
    dead, done = _claim(store), _claim(store)
    store.fail(dead, "boom", "", None, now=NOW)
    store.finish(done, now=NOW)
    assert store.replay("acme", "missing") is None
    assert store.replay("acme", "new") == "received"  # left alone
    assert store.replay("acme", "done", now=NOW + 1) == "done"
    assert store.get("done")[0]["status"] == "received"
    assert [(row["company"], row["id"], row["event"]) for row in store.replay_dead(now=NOW + 1)] == [
        ("acme", "dead", "test.event")
    ]
    assert store.counts() == {"received": 3}
    assert {row["attempts"] for row in store.list_events()} == {0}


def test_list_get_and_counts(store):
    _insert(store, "1", "2", "3")
    _insert(store, "1", company="other")
    store.finish(_claim(store), now=NOW)
    assert [row["id"] for row in store.list_events()] == ["1", "3", "2", "1"]
    assert [row["id"] for row in store.list_events(limit=2)] == ["1", "3"]
    assert [row["id"] for row in store.list_events("done")] == ["1"]
    assert "body" not in store.list_events()[0]
    assert [row["company"] for row in store.get("1")] == ["acme", "other"]
    assert store.get("1", "other")[0]["body"] == '{"data": {}}'
    assert store.get("nope") == []
    assert store.counts() == {"done": 1, "received": 3}
    assert set(store.counts()) <= set(STATUSES)


def test_oldest_unfinished_ignores_done_and_dead(store):
    assert store.oldest_unfinished() is None
    _insert(store, "done", at=NOW)
    _insert(store, "dead", at=NOW + 1)
    _insert(store, "failed", at=NOW + 2)
    _insert(store, "received", at=NOW + 3)
    store.finish(_claim(store, at=NOW + 5), now=NOW + 5)
    store.fail(_claim(store, at=NOW + 5), "x", "", None, now=NOW + 5)
    assert store.oldest_unfinished() == NOW + 2
    store.fail(_claim(store, at=NOW + 5), "x", "", NOW + 100, now=NOW + 5)
    assert store.oldest_unfinished() == NOW + 2
    store.finish(_claim(store, at=NOW + 5), now=NOW + 6)
    assert store.oldest_unfinished() == NOW + 2


def _health_row(store, database_url):
    """Read store_health behind the store's back, as an operator's SQL client would."""
    sql = "SELECT count(*), max(checked_at) FROM store_health"
    if store.backend == "sqlite":
        import sqlite3

        from store import sqlite_path

        with contextlib.closing(sqlite3.connect(sqlite_path(database_url))) as conn:
            return conn.execute(sql).fetchone()
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute(sql).fetchone()


def test_probe_write_writes_one_row_and_moves_its_time(store, database_url):
    assert _health_row(store, database_url)[0] == 0
    store.probe_write()
    count, first = _health_row(store, database_url)
    assert count == 1
    store.probe_write()
    count, second = _health_row(store, database_url)
    assert count == 1
    assert second >= first


def test_a_store_that_cannot_be_reached_raises_store_unavailable(backend, tmp_path, caplog):
    if backend == "sqlite":
        (tmp_path / "a-file").write_text("")
        url = f"sqlite:///{tmp_path}/a-file/inbox.sqlite3"  # its folder is a file
    else:
        from devtools.processes import listening_socket

        with listening_socket() as sock:  # a port nothing will answer on once closed
            port = sock.getsockname()[1]
        url = f"postgresql://postgres:canary-password@127.0.0.1:{port}/nothing"
    broken = open_store(url)
    try:
        for attempt in (broken.probe_write, lambda: broken.insert("acme", "1", "e", "{}")):
            with pytest.raises(StoreUnavailable) as caught:
                attempt()
            assert "canary-password" not in str(caught.value)
    finally:
        broken.shutdown()
    assert "canary-password" not in caplog.text


def test_acquire_periodic_lets_one_caller_run_per_period(store, other):
    assert store.acquire_periodic("prune", 60, now=NOW)
    assert not store.acquire_periodic("prune", 60, now=NOW + 1)
    assert not other.acquire_periodic("prune", 60, now=NOW + 59)
    assert store.acquire_periodic("other-job", 60, now=NOW + 1)  # each job has its own clock
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(handle) -> None:
        barrier.wait()
        results.append(handle.acquire_periodic("prune", 60, now=NOW + 60))

    threads = [threading.Thread(target=race, args=(store if n % 2 else other,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_prune_deletes_old_done_and_dead_rows_in_batches(store):
    _insert(store, *[f"d{n}" for n in range(7)], "dead-old", "dead-new", "failed", "received")
    for _ in range(7):
        store.finish(_claim(store), now=NOW)
    store.fail(_claim(store), "x", "", None, now=NOW)
    store.fail(_claim(store), "x", "", None, now=NOW + 100)
    store.fail(_claim(store), "x", "", NOW + 1000, now=NOW)
    assert store.prune_done(before=NOW, batch=3) == 0  # not older than NOW
    assert store.prune_done(before=NOW + 1, batch=3) == 7
    assert store.prune_dead(before=NOW + 50, batch=3) == 1
    assert store.counts() == {"dead": 1, "failed": 1, "received": 1}


def test_rows_copy_between_stores_with_states_and_attempts_and_never_double(store, backend, tmp_path):
    _insert(store, "done", "failed", "received")
    store.finish(_claim(store), now=NOW + 1)
    store.fail(_claim(store), "boom", "tb", NOW + 50, now=NOW + 2)
    target = open_store("sqlite:///" + str(tmp_path / "copy.sqlite3"))
    target.upgrade()
    try:
        rows = store.export_rows(0, 100)
        assert [row["id"] for row in rows] == ["done", "failed", "received"]
        assert target.import_rows([{k: v for k, v in r.items() if k != "seq"} for r in rows]) == 3
        assert target.import_rows([{k: v for k, v in r.items() if k != "seq"} for r in rows]) == 0
        assert store.export_rows(rows[0]["seq"], 1)[0]["id"] == "failed"
        copied = {row["id"]: row for row in target.export_rows(0, 100)}
        for row in rows:
            assert {k: v for k, v in copied[row["id"]].items() if k != "seq"} == {
                k: v for k, v in row.items() if k != "seq"
            }
    finally:
        target.shutdown()


def test_concurrent_claimers_on_two_handles_never_claim_a_row_twice(store, other):
    _insert(store, *[str(n) for n in range(200)])
    claimed: Counter[str] = Counter()
    lock = threading.Lock()

    def work(handle) -> None:
        while (claim := handle.claim_next(30, now=NOW)) is not None:
            with lock:
                claimed[claim.id] += 1
            handle.finish(claim, now=NOW)
        handle.close()

    threads = [threading.Thread(target=work, args=(store if n % 2 else other,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 200 and set(claimed.values()) == {1}
    assert store.counts() == {"done": 200}


BOOT = """
import os
from app import create_app
from settings import load_settings

app = create_app(load_settings(os.environ))
print(app.extensions["store"].schema_version())
"""


def test_several_processes_starting_at_once_on_a_fresh_store_all_boot(database_url, backend):
    env = {
        **os.environ,
        "REHIVE_ADMIN_TOKEN": "token",
        "REHIVE_WEBHOOK_SECRET": "secret",
        "REHIVE_COMPANY": "acme",
        "DATABASE_URL": database_url,
        "WEBHOOK_WORKER": "off",
    }
    env.pop("DATABASE_PATH", None)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BOOT], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(6)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    newest = str(len(migrations(backend)))
    assert [process.returncode for process in processes] == [0] * 6, [err[-2000:] for _, err in results]
    assert [out.decode().strip() for out, _ in results] == [newest] * 6
    upgraded = sum(err.decode().count(f"store schema upgraded to {newest}") for _, err in results)
    assert upgraded == 1  # exactly one process created the schema


def test_a_new_schema_version_is_applied_to_a_store_at_the_previous_one(store, tmp_path, monkeypatch):
    import shutil

    import store as store_package

    # A later release adds a table (say, company registrations) as the next version of both backends.
    current = len(migrations(store.backend))
    sql = tmp_path / "sql"
    shutil.copytree(store_package.SQL, sql)
    for name in BACKENDS:
        (sql / name / f"{current + 1:04d}_later.sql").write_text(
            "-- a later release\nCREATE TABLE later_table (\n    identifier TEXT PRIMARY KEY\n);\n"
        )
    monkeypatch.setattr(store_package, "SQL", sql)
    _insert(store, "kept")
    assert store.upgrade() == (current, current + 1)
    assert store.schema_version() == current + 1
    assert store.upgrade() == (current + 1, current + 1)
    assert [row["id"] for row in store.list_events()] == ["kept"]


# -- the manage page's view: one company's rows and settings -------------------------------------------


def test_a_company_sees_only_its_own_rows_paged_newest_first_and_filtered(store):
    _insert(store, "a1", "a2", "a3", company="acme")
    _insert(store, "b1", company="other")
    store.insert("acme", "a4", "other.event", "{}", now=NOW)

    count, rows = store.page_of("acme", None, None, 0, 2)
    assert count == 4
    assert [row["id"] for row in rows] == ["a4", "a3"]
    assert set(rows[0]) == {"id", "event", "status", "attempts", "received_at", "updated_at", "last_error"}
    assert store.page_of("acme", None, None, 2, 2)[1][-1]["id"] == "a1"
    assert store.page_of("acme", None, "other.event", 0, 10)[0] == 1
    assert store.page_of("acme", "dead", None, 0, 10) == (0, [])
    assert store.page_of("nobody", None, None, 0, 10) == (0, [])
    assert store.counts_of("acme") == {"received": 4}
    assert store.counts_of("other") == {"received": 1}


def test_replaying_a_companys_dead_events_leaves_other_companies_alone(store):
    _insert(store, "a1", company="acme")
    _insert(store, "b1", company="other")
    for _ in range(2):
        claim = _claim(store)
        store.fail(claim, "boom", "", None, now=NOW)
    assert store.counts() == {"dead": 2}

    assert store.replay_dead_of("acme", now=NOW) == 1
    assert store.counts_of("acme") == {"received": 1}
    assert store.counts_of("other") == {"dead": 1}
    [row] = store.get("a1", "acme")
    assert row["attempts"] == 0


def test_company_settings_are_per_company_and_replaced_in_place(store):
    assert store.company_setting("acme", "savings_percent") is None
    store.set_company_setting("acme", "savings_percent", 10, now=NOW)
    store.set_company_setting("acme", "savings_percent", 25, now=NOW + 1)
    store.set_company_setting("other", "savings_percent", 0, now=NOW)
    assert store.company_setting("acme", "savings_percent") == 25
    assert store.company_setting("other", "savings_percent") == 0
    assert store.company_setting("acme", "unknown") is None


# -- company registrations (multi-company mode) -------------------------------------------------------


def _register(store, company="acme", token="tok-ct", secret="sec-ct", at=NOW):
    return store.activate_company(company, token, "u-service", secret, ["transaction.execute"], now=at)


def test_a_company_activates_once_then_again_keeping_its_secret(store):
    assert store.registration("acme") is None
    assert _register(store) is True
    row = store.registration("acme")
    assert row["active"] is True and row["token"] == "tok-ct" and row["secret"] == "sec-ct"
    assert row["token_status"] == "ok" and row["activated_at"] == NOW and row["deactivated_at"] is None
    assert row["webhook_events"] == '["transaction.execute"]'
    assert store.deactivate_company("acme", now=NOW + 1) is True
    row = store.registration("acme")
    assert row["active"] is False and row["token"] is None and row["deactivated_at"] == NOW + 1
    assert store.deactivate_company("acme", now=NOW + 2) is True  # again: still the first time
    assert store.registration("acme")["deactivated_at"] == NOW + 1
    assert store.replace_token("acme", "tok-new", "u-service", now=NOW + 3) is False  # inactive
    assert _register(store, token="tok-2", secret="other-secret", at=NOW + 4) is False  # re-activation
    row = store.registration("acme")
    assert (row["active"], row["token"], row["secret"], row["deactivated_at"]) == (
        True,
        "tok-2",
        "sec-ct",
        None,
    )
    assert store.deactivate_company("nobody") is False
    assert [r["company"] for r in store.registrations()] == ["acme"]


def test_a_refused_token_is_marked_until_replaced_and_only_if_still_stored(store):
    _register(store)
    assert store.mark_token_invalid("acme", "an-older-token") is False
    assert store.mark_token_invalid("acme", "tok-ct") is True
    assert store.registration("acme")["token_status"] == "token_invalid"
    assert store.replace_token("acme", "tok-3", "u-service") is True
    assert store.registration("acme")["token_status"] == "ok"


def test_claims_wait_for_inactive_or_refused_companies_and_single_mode_claims_its_own(store):
    _register(store, "acme")
    _register(store, "beta")
    _insert(store, "a1", company="acme")
    _insert(store, "b1", company="beta")
    _insert(store, "n1", company="nobody")
    store.deactivate_company("beta")
    store.mark_token_invalid("acme", "tok-ct")
    assert not store.has_due(NOW, registered=True)
    assert store.claim_next(30, now=NOW, registered=True) is None
    store.replace_token("acme", "tok-4", "u")
    assert store.has_due(NOW, registered=True)
    assert store.claim_next(30, now=NOW, registered=True).id == "a1"
    assert store.claim_next(30, now=NOW, registered=True) is None  # beta inactive, nobody unknown
    _register(store, "beta", at=NOW + 1)
    assert store.claim_next(30, now=NOW, registered=True).id == "b1"
    assert store.claim_next(30, now=NOW, company="other") is None
    assert store.claim_next(30, now=NOW, company="nobody").id == "n1"
    assert store.counts() == {"processing": 3}  # waiting is never dead


def test_purge_deletes_every_row_of_the_company_and_nothing_else(store):
    _register(store, "acme")
    _register(store, "beta")
    _insert(store, "a1", "a2", company="acme")
    _insert(store, "b1", company="beta")
    store.set_company_setting("acme", "savings_percent", 5)
    store.set_company_setting("beta", "savings_percent", 7)
    deleted = store.purge_company("acme")
    assert deleted == {"company_registrations": 1, "company_settings": 1, "webhook_events": 2}
    assert store.registration("acme") is None and store.company_setting("acme", "savings_percent") is None
    assert store.counts_of("acme") == {}
    assert store.registration("beta") is not None and store.counts_of("beta") == {"received": 1}


def test_secrets_and_ciphertexts_are_replaced_only_over_what_is_stored(store):
    _register(store)
    assert store.set_secret("acme", "sec-2", "sec-ct", NOW + 60) is True
    row = store.registration("acme")
    assert (row["secret"], row["previous_secret"], row["previous_secret_until"]) == (
        "sec-2",
        "sec-ct",
        NOW + 60,
    )
    old = {"token": "tok-ct", "secret": "sec-2", "previous_secret": "sec-ct"}
    new = {"token": "tok-x", "secret": "sec-x", "previous_secret": "prev-x"}
    assert store.rewrite_ciphertexts("acme", {**old, "token": "stale"}, new) is False
    assert store.rewrite_ciphertexts("acme", old, new) is True
    store.deactivate_company("acme")
    old, new = {**new, "token": None}, {"token": None, "secret": "s3", "previous_secret": None}
    assert store.rewrite_ciphertexts("acme", old, new) is True
    assert store.set_secret("nobody", "s", None, None) is False


def test_finish_and_claim_settles_one_and_leases_the_next(store):
    _insert(store, "a", "b", "c")
    first = _claim(store)
    finished, second = store.finish_and_claim(first, 30, now=NOW + 1, company="acme")
    assert finished and second is not None and second.id == "b" and second.attempts == 1
    assert store.get("a")[0]["status"] == "done"
    assert store.get("b")[0]["status"] == "processing"
    # Another company's event is never taken by a scoped claim; a lost lease is not finished.
    store.insert("other", "x", "test.event", '{"data": {}}', now=NOW)
    finished, third = store.finish_and_claim(first, 30, now=NOW + 2, company="acme")
    assert not finished and third is not None and third.id == "c"
    finished, none = store.finish_and_claim(second, 30, now=NOW + 3, company="acme")
    assert finished and none is None
    assert store.get("x")[0]["status"] == "received"


def test_company_settings_and_registrations_copy_between_stores_once(store, tmp_path):
    store.set_company_setting("acme", "savings_percent", 25, now=NOW)
    store.activate_company("acme", "ciphertext-of-token", "u-service", "ciphertext-of-secret", ["e"], now=NOW)
    store.deactivate_company("acme", now=NOW + 1)
    target = open_store("sqlite:///" + str(tmp_path / "copy.sqlite3"))
    target.upgrade()
    try:
        registrations, settings = store.export_company_rows()
        assert target.import_company_rows(registrations, settings) == 2
        assert target.import_company_rows(registrations, settings) == 0
        assert target.company_setting("acme", "savings_percent") == 25
        assert target.registrations() == store.registrations()
        assert target.registration("acme")["active"] is False
    finally:
        target.shutdown()
