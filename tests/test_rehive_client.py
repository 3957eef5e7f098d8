"""The Rehive client: what it sends, when it retries, and which error each answer becomes."""

import threading

import pytest
import requests
from responses import matchers

from rehive_client import (
    RehiveBadResponse,
    RehiveClient,
    RehiveForbidden,
    RehiveRateLimited,
    RehiveRequestError,
    RehiveTimeout,
    RehiveUnauthorized,
    RehiveUnavailable,
)
from tests.conftest import API

OK = {"status": "success", "data": {"count": 0, "next": None, "previous": None, "results": []}}


@pytest.fixture
def rehive():
    return RehiveClient(API, "admin-tok", timeout=(3.0, 10.0), backoff=0)


def test_admin_calls_carry_the_admin_token_and_both_timeouts(rehive, rsps):
    rsps.get(
        API + "admin/transactions/",
        json=OK,
        match=[
            matchers.header_matcher({"Authorization": "Token admin-tok"}),
            matchers.request_kwargs_matcher({"timeout": (3.0, 10.0)}),
            matchers.query_param_matcher({"user": "u1"}),
        ],
    )
    assert rehive.get("admin/transactions/", params={"user": "u1"}) == OK


def test_whoami_forwards_the_users_token_and_address_not_the_admins(rehive, rsps):
    rsps.get(
        API + "auth/",
        json={"status": "success", "data": {"id": "u1", "company": "acme"}},
        match=[
            matchers.header_matcher({"Authorization": "Token user-tok", "X-Forwarded-For": "203.0.113.9"})
        ],
    )
    assert rehive.whoami("user-tok", forwarded_for="203.0.113.9")["id"] == "u1"


def test_a_call_without_a_token_is_refused_before_it_is_sent(rsps):
    with pytest.raises(ValueError):
        RehiveClient(API).request("GET", "auth/", token="")
    with pytest.raises(RehiveUnauthorized):
        RehiveClient(API).get("admin/transactions/")


def test_posts_carry_the_idempotency_key(rehive, rsps):
    rsps.post(
        API + "admin/transactions/transfer/",
        status=201,
        json={"status": "success", "data": {}},
        match=[
            matchers.header_matcher({"Idempotency-Key": "evt-1:transfer"}),
            matchers.json_params_matcher({"amount": 5}),
        ],
    )
    rehive.post("admin/transactions/transfer/", {"amount": 5}, idempotency_key="evt-1:transfer")


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (401, {}, RehiveUnauthorized),
        (403, {}, RehiveForbidden),
        (429, {"Retry-After": "7"}, RehiveRateLimited),
        (400, {}, RehiveRequestError),
        (404, {}, RehiveRequestError),
        (500, {}, RehiveUnavailable),
    ],
)
def test_each_error_status_becomes_a_typed_error(rehive, rsps, status, headers, error):
    rsps.get(API + "auth/", status=status, headers=headers, json={"status": "error", "message": "nope"})
    with pytest.raises(error) as info:
        rehive.whoami("t")
    assert info.value.status == status
    assert info.value.message == "nope" or status == 500
    if status == 429:
        assert info.value.retry_after == "7"


def test_gets_retry_on_connection_errors_then_succeed(rehive, rsps):
    rsps.get(API + "auth/", body=requests.ConnectionError("refused"))
    rsps.get(API + "auth/", json={"status": "success", "data": {"id": "u1"}})
    assert rehive.whoami("t")["id"] == "u1"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gets_retry_on_gateway_errors(rehive, rsps, status):
    rsps.get(API + "auth/", status=status, json={"status": "error", "message": "x"})
    rsps.get(API + "auth/", json={"status": "success", "data": {"id": "u1"}})
    assert rehive.whoami("t")["id"] == "u1"


def test_gets_give_up_after_the_retries_as_unavailable(rehive, rsps):
    for _ in range(3):
        rsps.get(API + "auth/", body=requests.ConnectionError("refused"))
    with pytest.raises(RehiveUnavailable):
        rehive.whoami("t")
    assert len(rsps.calls) == 3


def test_a_read_timeout_is_not_retried(rehive, rsps):
    rsps.get(API + "auth/", body=requests.ReadTimeout("slow"))
    with pytest.raises(RehiveTimeout):
        rehive.whoami("t")
    assert len(rsps.calls) == 1


def test_a_500_is_not_retried(rehive, rsps):
    rsps.get(API + "auth/", status=500, json={"status": "error", "message": "boom"})
    with pytest.raises(RehiveUnavailable):
        rehive.whoami("t")


def test_posts_are_never_retried(rehive, rsps):
    rsps.post(API + "admin/accounts/", body=requests.ConnectionError("reset"))
    with pytest.raises(RehiveUnavailable):
        rehive.post("admin/accounts/", {"name": "savings"})
    assert len(rsps.calls) == 1


def test_a_long_retry_after_on_503_is_not_waited_for(rehive, rsps):
    rsps.get(
        API + "auth/", status=503, headers={"Retry-After": "120"}, json={"status": "error", "message": "x"}
    )
    with pytest.raises(RehiveUnavailable) as info:
        rehive.whoami("t")
    assert info.value.retry_after == "120"


@pytest.mark.parametrize("body", ["<html>oops</html>", "[1, 2]"])
def test_a_success_that_is_not_a_json_object_is_a_bad_response(rehive, rsps, body):
    rsps.get(API + "admin/transactions/", body=body, status=200)
    with pytest.raises(RehiveBadResponse):
        rehive.get("admin/transactions/")


def test_each_thread_gets_its_own_session_and_no_cookies_are_kept(rehive, rsps):
    rsps.get(
        API + "auth/", json={"status": "success", "data": {"id": "u1"}}, headers={"Set-Cookie": "sid=abc"}
    )
    rehive.whoami("t")
    assert len(rehive.session.cookies) == 0
    seen = []
    thread = threading.Thread(target=lambda: seen.append(rehive.session))
    thread.start()
    thread.join()
    assert seen[0] is not rehive.session


def test_repr_never_shows_the_token(rehive):
    assert "admin-tok" not in repr(rehive)


def test_proxies_and_the_ca_bundle_come_from_the_environment_once(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corporate-ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = RehiveClient(API).session
    assert session.verify == "/etc/corporate-ca.pem"
    assert session.proxies["https"] == "http://proxy.internal:3128"
    assert session.trust_env is False  # not re-read (with ~/.netrc) on every call
