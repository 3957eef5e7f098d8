"""Operating the service: /metrics (who may read it, what it counts), /readyz, request ids, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
from responses import matchers

import metrics
from app import create_app
from logs import JsonFormatter, RequestIdFilter, choose_request_id
from settings import ConfigError, load_settings
from tests.conftest import ADMIN_TOKEN, API, COMPANY, WEBHOOK_SECRET, rehive_user, webhook_body
from webhooks import Registry, WorkerPool, webhooks_of

AUTH = API + "auth/"
LIST = API + "admin/transactions/"
METRICS_TOKEN = "canary-metrics-token-0123456789abcdef"
OUTSIDE = {"REMOTE_ADDR": "203.0.113.7"}
EMPTY_PAGE = {"status": "success", "data": {"count": 0, "next": None, "previous": None, "results": []}}


def sample(name: str, **labels: str) -> float:
    """Return the current value of one series of this process's metrics (0 when it has none yet)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


# -- who may read /metrics ---------------------------------------------------------------------------


@pytest.fixture
def guarded(settings):
    return create_app(settings.replace(metrics_token=METRICS_TOKEN)).test_client()


@pytest.mark.parametrize(
    ("environ", "authorization"),
    [
        (OUTSIDE, None),
        (OUTSIDE, "Bearer wrong-token"),
        (OUTSIDE, f"Bearer {METRICS_TOKEN}x"),
        (OUTSIDE, f"Token {METRICS_TOKEN}"),
        (OUTSIDE, f"Secret {WEBHOOK_SECRET}"),
        (OUTSIDE, "Bearer "),
        (OUTSIDE, "Bearer caf\u00e9"),
        ({"REMOTE_ADDR": "not-an-address"}, None),
        ({"REMOTE_ADDR": "10.0.0.1"}, None),
    ],
)
def test_metrics_are_refused_to_strangers_with_403_json(guarded, environ, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = guarded.get("/metrics", headers=headers, environ_base=environ)
    assert response.status_code == 403
    assert response.json == {"status": "error", "message": "Metrics are not served to this caller."}


def test_metrics_are_served_to_loopback_and_to_the_bearer_token(guarded):
    assert guarded.get("/metrics").status_code == 200  # the test client comes from 127.0.0.1
    response = guarded.get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, environ_base=OUTSIDE
    )
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert "rehive_ext_webhook_inbox_events" in response.get_data(as_text=True)


def test_without_a_metrics_token_a_bearer_never_matches(client):
    response = client.get("/metrics", headers={"Authorization": "Bearer "}, environ_base=OUTSIDE)
    assert response.status_code == 403


def test_metrics_allowed_ips_takes_ranges_and_refuses_bad_entries(settings):
    client = create_app(settings.replace(metrics_allowed_ips=frozenset({"10.0.0.0/8"}))).test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics").status_code == 403  # loopback is no longer in the list
    with pytest.raises(ConfigError, match="METRICS_ALLOWED_IPS"):
        create_app(settings.replace(metrics_allowed_ips=frozenset({"10.0.0.0/33"})))
    with pytest.raises(ConfigError, match=r"METRICS_ALLOWED_IPS .*10\.0\.0\.1/0 \(host bits set\)"):
        create_app(settings.replace(metrics_allowed_ips=frozenset({"10.0.0.1/0"})))


# -- what /metrics counts ----------------------------------------------------------------------------


def test_webhook_deliveries_are_counted_by_outcome(client, post_webhook):
    name = "rehive_ext_webhook_deliveries_total"
    before = {o: sample(name, outcome=o) for o in ("stored", "duplicate", "unauthorized", "other_company")}
    acks = sample("rehive_ext_webhook_ack_seconds_count")
    assert post_webhook(webhook_body(event_id="m-1")).status_code == 202
    assert post_webhook(webhook_body(event_id="m-1")).status_code == 200
    assert post_webhook(webhook_body(event_id="m-2"), secret="wrong").status_code == 401
    assert post_webhook(webhook_body(event_id="m-3", company="other")).status_code == 403
    after = {o: sample(name, outcome=o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        "stored": 1,
        "duplicate": 1,
        "unauthorized": 1,
        "other_company": 1,
    }
    assert sample("rehive_ext_webhook_ack_seconds_count") - acks == 2  # only acknowledgements are timed


def test_inbox_gauges_are_read_from_the_store_at_scrape_time(client, inbox):
    received_at = time.time() - 120
    inbox.insert(COMPANY, "old", "x", json.dumps(webhook_body(event_id="old")), now=received_at)
    inbox.insert(COMPANY, "new", "x", json.dumps(webhook_body(event_id="new")))
    text = scrape(client)
    assert 'rehive_ext_webhook_inbox_events{state="received"} 2.0' in text
    assert 'rehive_ext_webhook_inbox_events{state="dead"} 0.0' in text
    age = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("rehive_ext_webhook_inbox_oldest_unfinished_age_seconds ")
    )
    assert 119 <= age < 3600


def test_finished_events_are_counted_by_outcome_and_bounded_event_name(app, inbox):
    registry = Registry()

    @registry.on("test.ok")
    def ok(event, rehive):
        pass

    @registry.on("test.boom")
    def boom(event, rehive):
        raise RuntimeError("no")

    pool = WorkerPool(app, inbox, registry, threads=1)
    name = "rehive_ext_webhook_events_finished_total"
    before = [
        sample(name, outcome="done", event="test.ok"),
        sample(name, outcome="failed", event="test.boom"),
        sample(name, outcome="done", event="other"),
    ]
    handler_runs = sample("rehive_ext_webhook_handler_seconds_count", event="test.ok")
    for event_id, event in [("e-1", "test.ok"), ("e-2", "test.boom"), ("e-3", "some.unknown.event")]:
        inbox.insert(COMPANY, event_id, event, json.dumps(webhook_body(event_id=event_id, event=event)))
    assert pool.drain() == 3
    after = [
        sample(name, outcome="done", event="test.ok"),
        sample(name, outcome="failed", event="test.boom"),
        sample(name, outcome="done", event="other"),
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert sample("rehive_ext_webhook_handler_seconds_count", event="test.ok") - handler_runs == 1
    assert sample(name, outcome="done", event="some.unknown.event") == 0


def test_rehive_calls_auth_cache_and_custom_answers_are_counted(client, rsps):
    rsps.get(AUTH, json={"status": "success", "data": rehive_user()})
    rsps.get(LIST, json=EMPTY_PAGE)
    rsps.get(LIST, status=503, json={"status": "error"})
    rsps.get(LIST, status=503, json={"status": "error"})
    rsps.get(LIST, status=503, json={"status": "error"})
    reads = ("rehive_ext_rehive_requests_total", {"kind": "admin_read"})
    before = {
        "auth_2xx": sample("rehive_ext_rehive_requests_total", kind="auth", status_class="2xx"),
        "read_2xx": sample(reads[0], **reads[1], status_class="2xx"),
        "read_5xx": sample(reads[0], **reads[1], status_class="5xx"),
        "hit": sample("rehive_ext_auth_cache_total", result="hit"),
        "miss": sample("rehive_ext_auth_cache_total", result="miss"),
        "200": sample("rehive_ext_custom_responses_total", status="200"),
        "503": sample("rehive_ext_custom_responses_total", status="503"),
        "timed": sample("rehive_ext_rehive_request_seconds_count", kind="admin_read"),
    }
    headers = {"Authorization": "Token user-tok"}
    assert client.get("/custom/transactions/", headers=headers).status_code == 200
    assert client.get("/custom/transactions/", headers=headers).status_code == 503  # cached user, 3 tries
    after = {
        "auth_2xx": sample("rehive_ext_rehive_requests_total", kind="auth", status_class="2xx"),
        "read_2xx": sample(reads[0], **reads[1], status_class="2xx"),
        "read_5xx": sample(reads[0], **reads[1], status_class="5xx"),
        "hit": sample("rehive_ext_auth_cache_total", result="hit"),
        "miss": sample("rehive_ext_auth_cache_total", result="miss"),
        "200": sample("rehive_ext_custom_responses_total", status="200"),
        "503": sample("rehive_ext_custom_responses_total", status="503"),
        "timed": sample("rehive_ext_rehive_request_seconds_count", kind="admin_read"),
    }
    assert {key: after[key] - before[key] for key in before} == {
        "auth_2xx": 1,
        "read_2xx": 1,
        "read_5xx": 3,
        "hit": 1,
        "miss": 1,
        "200": 1,
        "503": 1,
        "timed": 4,
    }


def test_no_label_holds_a_token_a_user_id_or_an_event_id(client, rsps, post_webhook):
    rsps.get(AUTH, json={"status": "success", "data": rehive_user("u-secret-user-id")})
    rsps.get(LIST, json=EMPTY_PAGE)
    client.get("/custom/transactions/", headers={"Authorization": "Token canary-user-token-xyz"})
    post_webhook(webhook_body(event_id="evt-canary-id", event="user.canary.event"))
    text = scrape(client)
    for secret in (ADMIN_TOKEN, WEBHOOK_SECRET, "canary-user-token-xyz", "u-secret-user-id", "evt-canary-id"):
        assert secret not in text
    assert "user.canary.event" not in text


# -- /readyz ---------------------------------------------------------------------------------------------


def test_readyz_is_ok_when_the_store_takes_a_write(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_503_when_the_store_refuses_writes(client, inbox):
    # This thread's connection is the one the test client's requests use: make it refuse writes.
    inbox.connection(durable=False).execute("PRAGMA query_only = ON")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "error"
    assert response.json["reasons"] == ["The store does not take writes (StoreUnavailable)."]
    assert client.get("/healthz").status_code == 200  # liveness is not readiness
    inbox.connection(durable=False).execute("PRAGMA query_only = OFF")
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("refusal", [401, 403])
def test_readyz_is_503_after_rehive_refused_the_admin_token_until_it_accepts_it_again(client, rsps, refusal):
    rsps.get(AUTH, json={"status": "success", "data": rehive_user()})
    rsps.get(LIST, status=refusal, json={"status": "error", "message": "Invalid token."})
    rsps.get(LIST, json=EMPTY_PAGE)
    headers = {"Authorization": "Token user-tok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/custom/transactions/", headers=headers).status_code == 502
    calls = len(rsps.calls)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["reasons"] == [f"Rehive refused the admin token on its last use ({refusal})."]
    assert len(rsps.calls) == calls, "a probe never calls Rehive"
    assert client.get("/custom/transactions/", headers=headers).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_refused_user_token_does_not_make_the_service_unready(client, rsps):
    rsps.get(AUTH, status=401, json={"status": "error", "message": "Invalid token."})
    assert client.get("/custom/transactions/", headers={"Authorization": "Token bad"}).status_code == 401
    assert client.get("/readyz").status_code == 200


# -- request ids and log lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123", True),
        ("trace.id:7_x", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("has space", False),
        ("new\nline", False),
        ('quote"', False),
        ("caf\u00e9", False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_short_and_safe(incoming, kept):
    chosen = choose_request_id(incoming)
    assert (chosen == incoming) is kept
    assert 1 <= len(chosen) <= 64


def test_every_answer_carries_a_request_id_sent_on_to_rehive(client, rsps):
    rsps.get(
        AUTH,
        json={"status": "success", "data": rehive_user()},
        match=[matchers.header_matcher({"X-Request-ID": "req-42"})],
    )
    rsps.get(LIST, json=EMPTY_PAGE, match=[matchers.header_matcher({"X-Request-ID": "req-42"})])
    headers = {"Authorization": "Token user-tok", "X-Request-ID": "req-42"}
    assert client.get("/custom/transactions/", headers=headers).headers["X-Request-ID"] == "req-42"
    made = client.get("/nowhere/", headers={"X-Request-ID": "bad id!"}).headers["X-Request-ID"]
    assert made != "bad id!" and len(made) == 32
    assert client.get("/healthz").headers["X-Request-ID"] != made


def test_json_logs_are_one_object_per_line_with_the_request_id(client, post_webhook):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("webhooks")
    logger.addHandler(handler)
    try:
        response = post_webhook(webhook_body(event_id="j-1"), headers={"X-Request-ID": "json-req-1"})
        logging.getLogger("webhooks").info("outside any request")
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 202
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    received = next(line for line in lines if line["message"].startswith("webhook received"))
    assert set(received) == {"time", "level", "logger", "message", "request_id"}
    assert received["request_id"] == "json-req-1" and received["logger"] == "webhooks"
    assert lines[-1]["request_id"] == "-"
    assert WEBHOOK_SECRET not in stream.getvalue()


def test_log_format_must_be_text_or_json():
    base = {"REHIVE_ADMIN_TOKEN": "t", "REHIVE_WEBHOOK_SECRET": "s"}
    assert load_settings({**base, "LOG_FORMAT": "json"}).log_format == "json"
    assert load_settings(base).log_format == "text"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_settings({**base, "LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        load_settings({**base, "WEBHOOK_RECONCILE_MINUTES": "5"})


# -- the store methods operations rely on -----------------------------------------------------------------


def test_acquire_periodic_lets_one_caller_run_per_period(inbox):
    assert inbox.acquire_periodic("job", 60, now=1000.0)
    assert not inbox.acquire_periodic("job", 60, now=1030.0)
    assert inbox.acquire_periodic("other-job", 60, now=1030.0)
    assert inbox.acquire_periodic("job", 60, now=1060.0)
    assert not inbox.acquire_periodic("job", 60, now=1060.0)


def test_oldest_unfinished_ignores_done_and_dead(app, inbox):
    assert inbox.oldest_unfinished() is None
    inbox.insert(COMPANY, "a", "x", json.dumps(webhook_body(event_id="a")), now=100.0)
    inbox.insert(COMPANY, "b", "x", json.dumps(webhook_body(event_id="b")), now=200.0)
    WorkerPool(app, inbox, Registry(), threads=1, clock=lambda: 150.0).process_one()  # "a" is done
    assert inbox.oldest_unfinished() == 200.0
    inbox.probe_write()
    assert webhooks_of(app).inbox is inbox


@pytest.mark.parametrize(
    ("status", "error", "label"),
    [
        (200, None, "2xx"),
        (404, None, "4xx"),
        (429, None, "429"),
        (503, None, "5xx"),
        (None, "timeout", "timeout"),
    ],
)
def test_status_classes_keep_throttling_apart(status, error, label):
    assert metrics.status_class(status, error) == label
