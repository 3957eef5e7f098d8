"""POST /webhooks/: who may deliver, what is stored, and what Rehive is answered (on both stores)."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time

import pytest
from responses import matchers

from app import create_app
from settings import ConfigError
from store import StoreUnavailable
from tests.conftest import ADMIN_TOKEN, API, BACKENDS, COMPANY, WEBHOOK_SECRET, both_backends, webhook_body
from webhooks import webhooks_of

REHIVE_IP = "34.91.230.165"
GOOD = {"Authorization": f"Secret {WEBHOOK_SECRET}"}
backend = pytest.fixture(params=BACKENDS)(both_backends)


@pytest.fixture(autouse=True)
def _apps_closed_after_the_test(apps, monkeypatch):
    # Every app a test builds here is shut down after it (a Postgres store holds a pool).
    monkeypatch.setattr(sys.modules[__name__], "create_app", apps)


def _json(body: object) -> dict:
    return {"data": json.dumps(body), "content_type": "application/json"}


def _nested(depth: int) -> dict:
    nested = "[" * depth + "1" + "]" * depth
    raw = f'{{"id": 1, "event": "x", "company": "{COMPANY}", "data": {{"a": {nested}}}}}'
    return {"data": raw, "content_type": "application/json"}


def _without(name: str) -> dict:
    body = webhook_body()
    del body[name]
    return _json(body)


def _raw(field: str) -> dict:
    """A body with one field written as raw JSON text (for what json.dumps would never write)."""
    raw = f'{{"id": 1, "event": "x", "company": "{COMPANY}", "data": {{}}, {field}}}'
    return {"data": raw, "content_type": "application/json"}


def _with(**fields: object) -> dict:
    return _json({**webhook_body(), **fields})


# Each row: (headers, request kwargs, expected status). Every row must be refused and store nothing.
HOSTILE = {
    "no header": ({}, _json(webhook_body()), 401),
    "empty header": ({"Authorization": ""}, _json(webhook_body()), 401),
    "scheme only": ({"Authorization": "Secret"}, _json(webhook_body()), 401),
    "scheme and space": ({"Authorization": "Secret "}, _json(webhook_body()), 401),
    "Token scheme": ({"Authorization": f"Token {WEBHOOK_SECRET}"}, _json(webhook_body()), 401),
    "Bearer scheme": ({"Authorization": f"Bearer {WEBHOOK_SECRET}"}, _json(webhook_body()), 401),
    "no space": ({"Authorization": f"Secret{WEBHOOK_SECRET}"}, _json(webhook_body()), 401),
    "bare secret": ({"Authorization": WEBHOOK_SECRET}, _json(webhook_body()), 401),
    "wrong secret": ({"Authorization": "Secret wrong"}, _json(webhook_body()), 401),
    "secret plus one": ({"Authorization": f"Secret {WEBHOOK_SECRET}x"}, _json(webhook_body()), 401),
    "secret minus one": ({"Authorization": f"Secret {WEBHOOK_SECRET[:-1]}"}, _json(webhook_body()), 401),
    "secret and more": ({"Authorization": f"Secret {WEBHOOK_SECRET} extra"}, _json(webhook_body()), 401),
    "non-ASCII secret": ({"Authorization": "Secret ünïcödé-ßécret"}, _json(webhook_body()), 401),
    "not JSON": (GOOD, {"data": "not json", "content_type": "application/json"}, 400),
    "empty body": (GOOD, {"data": "", "content_type": "application/json"}, 400),
    "not UTF-8": (GOOD, {"data": b'{"id": "\xff"}', "content_type": "application/json"}, 400),
    "NaN": (GOOD, {"data": '{"id": NaN}', "content_type": "application/json"}, 400),
    "a list": (GOOD, _json([webhook_body()]), 400),
    "nested beyond recursion": (GOOD, _nested(100_000), 400),
    "nested beyond our limit": (GOOD, _nested(100), 400),
    "id missing": (GOOD, _without("id"), 400),
    "event missing": (GOOD, _without("event"), 400),
    "company missing": (GOOD, _without("company"), 400),
    "data missing": (GOOD, _without("data"), 400),
    "id true": (GOOD, _with(id=True), 400),
    "id null": (GOOD, _with(id=None), 400),
    "id float": (GOOD, _with(id=1.5), 400),
    "id object": (GOOD, _with(id={"id": 1}), 400),
    "id empty": (GOOD, _with(id=""), 400),
    "id 101 chars": (GOOD, _with(id="x" * 101), 400),
    "id huge int": (GOOD, _with(id=10**101), 400),
    "event int": (GOOD, _with(event=7), 400),
    "event empty": (GOOD, _with(event=""), 400),
    "company int": (GOOD, _with(company=1), 400),
    "data list": (GOOD, _with(data=[1, 2]), 400),
    "data string": (GOOD, _with(data="{}"), 400),
    "data null": (GOOD, _with(data=None), 400),
    "other company": (GOOD, _with(company="evil-corp"), 403),
    "oversized": (GOOD, _with(data={"pad": "x" * 1_048_576}), 413),
    "text/plain": (GOOD, {"data": json.dumps(webhook_body()), "content_type": "text/plain"}, 415),
    "form": (GOOD, {"data": {"id": "1"}}, 415),
    "no content type": (GOOD, {"data": json.dumps(webhook_body()), "content_type": ""}, 415),
    # Valid JSON that is not text or not a number Python can write back (found by `make reliability`).
    "id a lone surrogate": (GOOD, _raw('"id": "\\ud800"'), 400),
    "event a lone surrogate": (GOOD, _raw('"event": "\\udfff"'), 400),
    "number out of range": (GOOD, _raw('"data": {"amount": 1e999999}'), 400),
}


@pytest.mark.parametrize(("headers", "kwargs", "status"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_requests_are_refused_and_store_nothing(client, inbox, headers, kwargs, status):
    response = client.post("/webhooks/", headers=headers, **kwargs)
    assert response.status_code == status
    assert response.json["status"] == "error"
    assert response.json["message"]
    assert inbox.list_events() == []


def test_a_chunked_body_over_the_limit_is_413_not_cut_and_stored(settings, inbox):
    app = create_app(settings.replace(webhook_max_bytes=1_000))
    body = json.dumps(webhook_body(data={"pad": "x" * 990})).encode()
    assert len(body) > 1_000
    response = app.test_client().post(
        "/webhooks/",
        headers={**GOOD, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert webhooks_of(app).inbox.list_events() == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(client, inbox, method):
    response = client.open("/webhooks/", method=method, headers=GOOD, **_json(webhook_body()))
    assert response.status_code == 405
    assert response.json["status"] == "error"
    assert inbox.list_events() == []


def test_401_names_the_scheme(post_webhook):
    response = post_webhook(secret="wrong")
    assert response.headers["WWW-Authenticate"] == "Secret"


def test_400_names_the_problem(post_webhook):
    assert "id" in post_webhook({**webhook_body(), "id": True}).json["message"]
    assert "data" in post_webhook({**webhook_body(), "data": []}).json["message"]
    assert (
        "Missing field(s): event" in post_webhook({"id": 1, "company": COMPANY, "data": {}}).json["message"]
    )


def test_an_oversized_body_without_content_length_is_413(client, inbox):
    body = json.dumps(webhook_body(data={"pad": "x" * 2_000_000})).encode()
    response = client.post(
        "/webhooks/",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers=GOOD,
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert inbox.list_events() == []


def test_a_new_event_is_202_then_the_same_id_is_200_and_runs_once(app, post_webhook, inbox):
    runs = []
    webhooks_of(app).registry.on("transaction.execute")(lambda event, _client: runs.append(event))

    first = post_webhook(webhook_body(event_id=42, data={"amount": 1}))
    again = post_webhook(webhook_body(event_id="42", data={"amount": 999}), path="/webhooks")

    assert (first.status_code, first.json) == (202, {"status": "success"})
    assert (again.status_code, again.json) == (200, {"status": "success"})
    assert webhooks_of(app).pool.drain() == 1
    assert post_webhook(webhook_body(event_id=42)).status_code == 200
    assert webhooks_of(app).pool.drain() == 0
    assert [(e.id, e.data) for e in runs] == [("42", {"amount": 1})]
    [row] = inbox.list_events()
    assert (row["id"], row["status"], row["attempts"]) == ("42", "done", 1)


def test_both_paths_are_served_without_a_redirect(post_webhook):
    assert post_webhook(webhook_body(event_id=1), path="/webhooks").status_code == 202
    assert post_webhook(webhook_body(event_id=2), path="/webhooks/").status_code == 202


def test_the_same_id_from_another_company_is_another_event(app, settings):
    inbox = webhooks_of(app).inbox
    assert inbox.insert("other", "1", "x", "{}")
    assert inbox.insert(COMPANY, "1", "x", "{}")
    assert not inbox.insert(COMPANY, "1", "x", "{}")


def test_unknown_events_are_stored_acknowledged_and_done(app, post_webhook, inbox):
    assert post_webhook(webhook_body(event="something.new")).status_code == 202
    webhooks_of(app).pool.drain()
    assert [row["status"] for row in inbox.list_events()] == ["done"]


@pytest.mark.parametrize("backend", ["sqlite"])  # reads the database file
def test_the_secret_is_neither_stored_nor_logged(app, post_webhook, settings, caplog):
    caplog.set_level(logging.DEBUG)
    webhooks_of(app).registry.on("*")(lambda event, client: None)
    assert post_webhook(webhook_body(data={"note": "hello"})).status_code == 202
    assert post_webhook(secret="almost-" + WEBHOOK_SECRET).status_code == 401
    webhooks_of(app).pool.drain()
    with open(settings.database_path, "rb") as db:
        assert WEBHOOK_SECRET.encode() not in db.read()
    assert WEBHOOK_SECRET not in caplog.text
    assert ADMIN_TOKEN not in caplog.text
    assert "webhook received company=acme id='1' event=transaction.execute" in caplog.text


def test_the_stored_row_keeps_the_raw_body(post_webhook, inbox):
    raw = '{"id": 7, "event": "e", "company": "acme", "data": {"b": 1, "a": 2}}'
    assert post_webhook(data=raw, content_type="application/json").status_code == 202
    [row] = inbox.get("7")
    assert row["body"] == raw


def test_a_storage_failure_is_503_not_an_acknowledgement(app, post_webhook, monkeypatch):
    def broken(*args, **kwargs):
        raise StoreUnavailable("OperationalError: disk I/O error")

    monkeypatch.setattr(webhooks_of(app).inbox, "insert", broken)
    response = post_webhook()
    assert response.status_code == 503
    assert response.headers["Retry-After"]


@pytest.mark.parametrize("backend", ["sqlite"])  # the SQLite lock file
def test_a_lock_failure_is_503_and_the_next_delivery_is_stored(app, post_webhook, inbox, monkeypatch):
    import store.sqlite

    real_flock = store.sqlite.fcntl.flock
    failures = iter([OSError("no locks on this filesystem")])

    def flaky_flock(fd, operation):
        error = next(failures, None)
        if error is not None:
            raise error
        real_flock(fd, operation)

    monkeypatch.setattr(store.sqlite.fcntl, "flock", flaky_flock)
    refused = post_webhook(webhook_body(event_id=1))
    assert refused.status_code == 503
    assert inbox.list_events() == []
    assert post_webhook(webhook_body(event_id=1)).status_code == 202  # Rehive's retry
    assert [row["id"] for row in inbox.list_events()] == ["1"]


def test_the_previous_secret_is_accepted_while_rotating(settings, inbox):
    app = create_app(settings.replace(webhook_secret="new-secret", webhook_secret_previous="old-secret"))
    client = app.test_client()

    def post(secret: str, event_id: int) -> int:
        headers = {"Authorization": f"secret {secret}"}  # the scheme is case-insensitive
        return client.post("/webhooks/", headers=headers, json=webhook_body(event_id=event_id)).status_code

    assert post("new-secret", 1) == 202
    assert post("old-secret", 2) == 202
    assert post(WEBHOOK_SECRET, 3) == 401
    assert post("older-secret", 4) == 401
    assert sorted(row["id"] for row in webhooks_of(app).inbox.list_events()) == ["1", "2"]


def test_no_previous_secret_means_an_empty_one_is_not_accepted(client):
    response = client.post("/webhooks/", headers={"Authorization": "Secret  "}, json=webhook_body())
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "status"),
    [
        (1, "10.0.0.5", REHIVE_IP, 202),  # behind our proxy, X-Forwarded-For names the sender
        (1, "10.0.0.5", "198.51.100.7", 403),
        (1, REHIVE_IP, "198.51.100.7", 403),  # the proxy's own address does not count
        (1, "10.0.0.5", f"198.51.100.7, {REHIVE_IP}", 202),  # only the hop our proxy added is trusted
        (1, "10.0.0.5", f"{REHIVE_IP}, 198.51.100.7", 403),
        (0, "198.51.100.7", REHIVE_IP, 403),  # no trusted proxy: a spoofed header is ignored
        (0, REHIVE_IP, "198.51.100.7", 202),
        (0, f"::ffff:{REHIVE_IP}", None, 202),
    ],
)
def test_the_address_allow_list(settings, proxies, remote, forwarded, status):
    app = create_app(settings.replace(trusted_proxies=proxies, webhook_allowed_ips=frozenset({REHIVE_IP})))
    headers = dict(GOOD)
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    response = app.test_client().post(
        "/webhooks/", headers=headers, json=webhook_body(), environ_base={"REMOTE_ADDR": remote}
    )
    assert response.status_code == status
    assert len(webhooks_of(app).inbox.list_events()) == (1 if status == 202 else 0)


def test_the_allow_list_takes_ranges(settings):
    app = create_app(settings.replace(webhook_allowed_ips=frozenset({"34.91.230.0/24"})))
    client = app.test_client()
    inside = client.post(
        "/webhooks/", headers=GOOD, json=webhook_body(), environ_base={"REMOTE_ADDR": REHIVE_IP}
    )
    outside = client.post(
        "/webhooks/", headers=GOOD, json=webhook_body(), environ_base={"REMOTE_ADDR": "1.2.3.4"}
    )
    assert (inside.status_code, outside.status_code) == (202, 403)


def test_an_invalid_allow_list_stops_the_app_from_starting(settings):
    with pytest.raises(ConfigError, match=r"WEBHOOK_ALLOWED_IPS has invalid addresses: not-an-ip\."):
        create_app(settings.replace(webhook_allowed_ips=frozenset({"not-an-ip", REHIVE_IP})))


def test_the_company_is_learned_from_rehive_once_in_the_background_when_not_configured(settings, rsps):
    rsps.get(
        API + "auth/",
        json={"status": "success", "data": {"id": "svc", "company": COMPANY}},
        match=[matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"})],
    )
    app = create_app(settings.replace(company=None))
    client = app.test_client()
    # Never asked inside the request: the first delivery starts the question in the background and is
    # answered 503 (stored nothing); Rehive delivers it again, with the same id, once we know.
    first = client.post("/webhooks/", headers=GOOD, json=webhook_body(event_id=1))
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "5"
    assert webhooks_of(app).inbox.counts() == {}
    from companies import CONFIRMED, company_of

    assert company_of(app).wait(5) == CONFIRMED
    assert client.post("/webhooks/", headers=GOOD, json=webhook_body(event_id=1)).status_code == 202
    assert client.post("/webhooks/", headers=GOOD, json=webhook_body(event_id=2)).status_code == 202
    other = client.post("/webhooks/", headers=GOOD, json=webhook_body(event_id=3, company="other"))
    assert other.status_code == 403
    assert len(rsps.calls) == 1


def test_a_serving_app_learns_its_company_at_start_so_deliveries_never_wait_on_rehive(settings, rsps):
    rsps.get(
        API + "auth/",
        json={"status": "success", "data": {"id": "svc", "company": COMPANY}},
        match=[matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"})],
    )
    app = create_app(settings.replace(company=None, webhook_worker="thread"))
    try:
        deadline = time.monotonic() + 10
        while len(rsps.calls) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rsps.calls) == 1  # asked once, before any delivery
        response = app.test_client().post("/webhooks/", headers=GOOD, json=webhook_body(event_id=1))
        assert response.status_code == 202
        assert len(rsps.calls) == 1
    finally:
        webhooks_of(app).pool.stop()


def test_concurrent_duplicate_deliveries_store_and_run_once(app, inbox):
    runs = []
    webhooks_of(app).registry.on("transaction.execute")(lambda event, _client: runs.append(event.id))
    barrier = threading.Barrier(16)
    statuses: list[int] = []
    lock = threading.Lock()

    def deliver(n: int) -> None:
        client = app.test_client()
        event_id = 77 if n % 2 else "77"  # the int and string forms are one event
        barrier.wait()
        status = client.post("/webhooks/", headers=GOOD, json=webhook_body(event_id=event_id)).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200] * 15 + [202]
    webhooks_of(app).pool.drain()
    webhooks_of(app).pool.drain()
    assert runs == ["77"]
    assert [row["status"] for row in inbox.list_events()] == ["done"]
