"""The auth decorators: parse the header, ask Rehive who it is, check company and group."""

import pytest
import requests
from flask import jsonify
from responses import matchers

from app import create_app
from auth import current_user, parse_token, require_groups, require_user
from tests.conftest import ADMIN_TOKEN, API, rehive_user

AUTH = API + "auth/"


def auth_ok(rsps, user=None, token="user-tok", **match_headers):
    """Expect one `GET /3/auth/` with `token` and answer with `user`."""
    headers = {"Authorization": f"Token {token}", **match_headers}
    rsps.get(
        AUTH,
        json={"status": "success", "data": user or rehive_user()},
        match=[matchers.header_matcher(headers)],
    )


@pytest.fixture
def app(settings):
    app = create_app(settings)

    @app.get("/me")
    @require_user
    def me():
        return jsonify(id=current_user["id"])

    @app.get("/staff")
    @require_groups("admin", "support")
    def staff():
        return jsonify(id=current_user["id"])

    return app


MALFORMED = [
    pytest.param({}, id="no header"),
    pytest.param({"Authorization": ""}, id="empty"),
    pytest.param({"Authorization": "Token"}, id="scheme alone"),
    pytest.param({"Authorization": "Token "}, id="scheme and space"),
    pytest.param({"Authorization": "Bearer user-tok"}, id="bearer"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic"),
    pytest.param({"Authorization": "Token a b"}, id="three parts"),
    pytest.param({"Authorization": "user-tok"}, id="no scheme"),
    pytest.param({"Authorization": "Tokenuser-tok"}, id="no space"),
    pytest.param({"Authorization": "Token tök"}, id="non-ascii"),
    pytest.param({"Authorization": "Token \x7f"}, id="control char"),
    pytest.param({"Authorization": "Token " + "a" * 600}, id="too long"),
    pytest.param({"Authorization": "Secret user-tok"}, id="webhook scheme"),
]


@pytest.mark.parametrize("headers", MALFORMED)
def test_a_missing_or_malformed_header_is_401_with_a_challenge_and_no_upstream_call(client, rsps, headers):
    response = client.get("/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    assert response.json["status"] == "error"
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("scheme", ["Token", "token", "TOKEN"])
def test_the_scheme_is_case_insensitive(scheme):
    assert parse_token(f"{scheme} abc") == "abc"


def test_non_latin1_header_bytes_do_not_crash(client, rsps):
    environ = {"HTTP_AUTHORIZATION": "Token \udcff\udcfe"}
    response = client.get("/me", environ_base=environ)
    assert response.status_code == 401


def test_the_users_header_and_address_are_forwarded(client, rsps):
    auth_ok(rsps, **{"X-Forwarded-For": "127.0.0.1"})
    response = client.get("/me", headers={"Authorization": "Token user-tok"})
    assert response.status_code == 200
    assert response.json == {"id": "u-alice"}
    assert "Cookie" not in rsps.calls[0].request.headers


def test_a_client_supplied_forwarded_for_is_ignored_without_trusted_proxies(client, rsps):
    auth_ok(rsps, **{"X-Forwarded-For": "127.0.0.1"})
    response = client.get("/me", headers={"Authorization": "Token user-tok", "X-Forwarded-For": "6.6.6.6"})
    assert response.status_code == 200


def test_behind_a_trusted_proxy_the_proxys_view_of_the_client_is_forwarded(settings, rsps):
    app = create_app(settings.replace(trusted_proxies=1))
    app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
    auth_ok(rsps, **{"X-Forwarded-For": "198.51.100.7"})
    response = app.test_client().get(
        "/me", headers={"Authorization": "Token user-tok", "X-Forwarded-For": "6.6.6.6, 198.51.100.7"}
    )
    assert response.status_code == 200
    assert rsps.calls[0].request.headers["X-Forwarded-For"] == "198.51.100.7"


UPSTREAM_FAILURES = [
    pytest.param({"status": 401, "json": {"status": "error", "message": "Invalid token."}}, 401, id="401"),
    pytest.param({"status": 403, "json": {"status": "error", "message": "MFA required."}}, 403, id="403"),
    pytest.param({"status": 500, "json": {"status": "error", "message": "x"}}, 503, id="500"),
    pytest.param({"status": 500, "body": "<html>"}, 503, id="500 html"),
    pytest.param({"body": requests.ReadTimeout()}, 504, id="timeout"),
    pytest.param({"status": 200, "body": "not json"}, 502, id="garbage"),
    pytest.param({"status": 200, "json": {"status": "success", "data": {}}}, 502, id="no user"),
]


@pytest.mark.parametrize(("answer", "expected"), UPSTREAM_FAILURES)
def test_each_upstream_answer_maps_to_its_status(client, rsps, answer, expected):
    rsps.get(AUTH, **answer)
    response = client.get("/me", headers={"Authorization": "Token user-tok"})
    assert response.status_code == expected
    assert response.json["status"] == "error"
    if expected != 401:
        assert "WWW-Authenticate" not in response.headers


def test_rehive_401_passes_its_message_and_a_challenge(client, rsps):
    rsps.get(AUTH, status=401, json={"status": "error", "message": "Invalid token."})
    response = client.get("/me", headers={"Authorization": "Token user-tok"})
    assert response.json["message"] == "Invalid token."
    assert response.headers["WWW-Authenticate"] == "Token"


def test_throttling_passes_through_with_retry_after(client, rsps):
    rsps.get(
        AUTH, status=429, headers={"Retry-After": "37"}, json={"status": "error", "message": "throttled"}
    )
    response = client.get("/me", headers={"Authorization": "Token user-tok"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "37"


def test_an_outage_is_503_never_bad_credentials(client, rsps):
    for _ in range(3):
        rsps.get(AUTH, body=requests.ConnectionError("refused"))
    response = client.get("/me", headers={"Authorization": "Token user-tok"})
    assert response.status_code == 503
    assert "WWW-Authenticate" not in response.headers


def test_a_user_of_another_company_is_refused(client, rsps):
    auth_ok(rsps, rehive_user("u-mallory", company="other"))
    response = client.get("/me", headers={"Authorization": "Token user-tok"})
    assert response.status_code == 403
    assert "company" in response.json["message"]


def test_the_refusal_of_another_company_is_not_cached(client, rsps):
    auth_ok(rsps, rehive_user("u-mallory", company="other"))
    auth_ok(rsps, rehive_user("u-mallory", company="other"))
    for _ in range(2):
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 403


@pytest.mark.parametrize(
    ("group", "expected"), [("admin", 200), ("support", 200), ("user", 403), ("service", 403)]
)
def test_require_groups(client, rsps, group, expected):
    auth_ok(rsps, rehive_user(group=group))
    response = client.get("/staff", headers={"Authorization": "Token user-tok"})
    assert response.status_code == expected


def test_a_user_with_no_groups_fails_a_group_check(client, rsps):
    auth_ok(rsps, {**rehive_user(), "groups": None})
    assert client.get("/staff", headers={"Authorization": "Token user-tok"}).status_code == 403


class TestCache:
    def test_a_success_is_reused(self, client, rsps):
        auth_ok(rsps)
        for _ in range(3):
            assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200
        assert len(rsps.calls) == 1

    def test_each_token_is_asked_about_separately(self, client, rsps):
        auth_ok(rsps, token="tok-a")
        auth_ok(rsps, rehive_user("u-bob"), token="tok-b")
        assert client.get("/me", headers={"Authorization": "Token tok-a"}).json["id"] == "u-alice"
        assert client.get("/me", headers={"Authorization": "Token tok-b"}).json["id"] == "u-bob"

    @pytest.mark.parametrize(
        ("answer", "status"),
        [
            pytest.param({"status": 403, "json": {"status": "error", "message": "MFA"}}, 403, id="403"),
            pytest.param({"status": 429, "json": {"status": "error", "message": "slow"}}, 429, id="429"),
            pytest.param({"status": 400, "json": {"status": "error", "message": "bad"}}, 401, id="400"),
        ],
    )
    def test_a_failure_other_than_401_is_never_stored(self, client, rsps, answer, status):
        rsps.get(AUTH, **answer)
        auth_ok(rsps)
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == status
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200

    def test_an_answer_expires(self, settings, rsps, monkeypatch):
        clock = [1000.0]
        monkeypatch.setattr("auth.time.monotonic", lambda: clock[0])
        app = create_app(settings.replace(auth_cache_seconds=10))
        app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
        client = app.test_client()
        auth_ok(rsps)
        auth_ok(rsps)
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200
        clock[0] += 9.9
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200
        assert len(rsps.calls) == 1
        clock[0] += 0.2
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200
        assert len(rsps.calls) == 2

    def test_zero_turns_caching_off(self, settings, rsps):
        app = create_app(settings.replace(auth_cache_seconds=0))
        app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
        auth_ok(rsps)
        auth_ok(rsps)
        for _ in range(2):
            assert (
                app.test_client().get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200
            )

    def test_the_cache_is_bounded_and_never_holds_the_token(self, settings, rsps, app):
        app = create_app(settings.replace(auth_cache_size=2))
        app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
        client = app.test_client()
        for n in range(3):
            auth_ok(rsps, token=f"tok-{n}")
            client.get("/me", headers={"Authorization": f"Token tok-{n}"})
        cache = app.extensions["auth_cache"]
        assert len(cache) == 2
        assert not any(b"tok-" in key for key in cache._items)


class TestCompany:
    def test_is_learned_once_from_the_admin_token_when_not_configured(self, settings, rsps):
        app = create_app(settings.replace(company=None))
        app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
        rsps.get(
            AUTH,
            json={"status": "success", "data": rehive_user("u-service", group="service")},
            match=[matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"})],
        )
        auth_ok(rsps, token="tok-a")
        auth_ok(rsps, token="tok-b")
        client = app.test_client()
        assert client.get("/me", headers={"Authorization": "Token tok-a"}).status_code == 200
        assert client.get("/me", headers={"Authorization": "Token tok-b"}).status_code == 200
        assert len(rsps.calls) == 3

    def test_an_outage_while_learning_it_is_503_and_it_is_asked_again_later(self, settings, rsps):
        app = create_app(settings.replace(company=None, auth_cache_seconds=0))
        app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
        admin = [matchers.header_matcher({"Authorization": f"Token {ADMIN_TOKEN}"})]
        rsps.get(AUTH, status=500, json={"status": "error", "message": "x"}, match=admin)
        rsps.get(
            AUTH, json={"status": "success", "data": rehive_user("u-service", group="service")}, match=admin
        )
        auth_ok(rsps)  # the user's token is not even asked about while our company is unknown
        client = app.test_client()
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 503
        assert client.get("/me", headers={"Authorization": "Token user-tok"}).status_code == 200
