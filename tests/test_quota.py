"""CUSTOM_RATE_LIMIT: one user's loop cannot spend the company's Rehive quota for everyone."""

import pytest

from app import create_app
from settings import ConfigError, load_settings
from tests.conftest import API, rehive_user
from tests.test_transactions import LIST, page

AUTH = API + "auth/"
ALICE = {"Authorization": "Token alice-tok"}
BOB = {"Authorization": "Token bob-tok"}


@pytest.fixture
def app(settings):
    return create_app(settings.replace(custom_rate_limit="2/minute"))


def who(rsps, user_id, token):
    from responses import matchers

    rsps.get(
        AUTH,
        json={"status": "success", "data": rehive_user(user_id)},
        match=[matchers.header_matcher({"Authorization": f"Token {token}"})],
    )


def test_over_the_limit_is_a_429_with_retry_after_and_no_admin_call(client, rsps):
    who(rsps, "u-alice", "alice-tok")
    rsps.get(LIST, json=page())
    rsps.get(LIST, json=page())
    assert [client.get("/custom/transactions/", headers=ALICE).status_code for _ in range(2)] == [200, 200]
    response = client.get("/custom/transactions/", headers=ALICE)
    assert response.status_code == 429
    assert response.json == {"status": "error", "message": "Too many requests; retry later."}
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Cache-Control"] == "no-store"
    assert [call.request.url.split("?")[0] for call in rsps.calls].count(LIST) == 2


def test_each_user_has_their_own_count(client, rsps):
    who(rsps, "u-alice", "alice-tok")
    who(rsps, "u-bob", "bob-tok")
    for _ in range(4):
        rsps.get(LIST, json=page())
    for headers in (ALICE, ALICE, BOB, BOB):
        assert client.get("/custom/transactions/", headers=headers).status_code == 200
    assert client.get("/custom/transactions/", headers=ALICE).status_code == 429
    assert client.get("/custom/transactions/", headers=BOB).status_code == 429


def test_the_count_is_per_user_not_per_token(client, rsps):
    who(rsps, "u-alice", "alice-tok")
    who(rsps, "u-alice", "alice-second-tok")
    rsps.get(LIST, json=page())
    rsps.get(LIST, json=page())
    assert client.get("/custom/transactions/", headers=ALICE).status_code == 200
    assert client.get("/custom/transactions/", headers=ALICE).status_code == 200
    second = {"Authorization": "Token alice-second-tok"}
    assert client.get("/custom/transactions/", headers=second).status_code == 429


def test_a_refused_token_is_not_counted_and_not_limited_here(client, rsps):
    rsps.get(AUTH, status=401, json={"status": "error", "message": "Invalid token."})
    for _ in range(4):
        assert client.get("/custom/transactions/", headers={"Authorization": "Token bad"}).status_code == 401


def test_the_default_is_120_a_minute():
    settings = load_settings({"REHIVE_ADMIN_TOKEN": "a", "REHIVE_WEBHOOK_SECRET": "b"})
    assert settings.custom_rate_limit == "120/minute"


@pytest.mark.parametrize("value", ["2/minute", "2 per minute", "10/second", "1000/hour"])
def test_rates_in_limits_notation_are_accepted(value):
    settings = load_settings(
        {"REHIVE_ADMIN_TOKEN": "a", "REHIVE_WEBHOOK_SECRET": "b", "CUSTOM_RATE_LIMIT": value}
    )
    assert settings.custom_rate_limit == value


@pytest.mark.parametrize(
    "value",
    ["120", "lots", "0/minute", "-1/minute", "nan/minute", "inf/minute", "1/fortnight", "1/minute;2/hour"],
)
def test_a_bad_rate_stops_the_start_and_is_named(settings, value):
    with pytest.raises(ConfigError, match="CUSTOM_RATE_LIMIT"):
        load_settings({"REHIVE_ADMIN_TOKEN": "a", "REHIVE_WEBHOOK_SECRET": "b", "CUSTOM_RATE_LIMIT": value})
    with pytest.raises(ConfigError, match="CUSTOM_RATE_LIMIT"):
        create_app(settings.replace(custom_rate_limit=value))
