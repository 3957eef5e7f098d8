"""What one caller can cost the company's Rehive quota: bogus tokens, loops, address spellings."""

import pytest
from flask import jsonify
from responses import matchers

from app import create_app
from auth import current_user, require_user
from tests.conftest import API, rehive_user

AUTH = API + "auth/"
BOGUS = {"Authorization": "Token bogus-tok"}


def refused(rsps):
    rsps.get(AUTH, status=401, json={"status": "error", "message": "Invalid token."})


def signed_in(rsps, forwarded_for=None):
    match = [matchers.header_matcher({"X-Forwarded-For": forwarded_for})] if forwarded_for else []
    rsps.get(AUTH, json={"status": "success", "data": rehive_user()}, match=match)


def app_with(settings, **changes):
    app = create_app(settings.replace(**changes))
    app.add_url_rule("/me", "me", require_user(lambda: jsonify(id=current_user["id"])))
    return app


class TestNegativeCache:
    def test_two_calls_with_one_bogus_token_make_one_rehive_call(self, settings, rsps):
        client = app_with(settings).test_client()
        refused(rsps)
        for _ in range(2):
            response = client.get("/me", headers=BOGUS)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Token"
            assert response.json == {"status": "error", "message": "Invalid token."}
        assert len(rsps.calls) == 1

    def test_from_another_address_too(self, settings, rsps):
        client = app_with(settings).test_client()
        refused(rsps)
        for address in ("198.51.100.1", "198.51.100.2"):
            assert client.get("/me", headers=BOGUS, environ_base={"REMOTE_ADDR": address}).status_code == 401
        assert len(rsps.calls) == 1

    def test_a_refusal_expires_after_auth_cache_seconds(self, settings, rsps, monkeypatch):
        clock = [1000.0]
        monkeypatch.setattr("auth.time.monotonic", lambda: clock[0])
        client = app_with(settings, auth_cache_seconds=10).test_client()
        refused(rsps)
        signed_in(rsps)
        assert client.get("/me", headers=BOGUS).status_code == 401
        clock[0] += 9.9
        assert client.get("/me", headers=BOGUS).status_code == 401
        clock[0] += 0.2
        assert client.get("/me", headers=BOGUS).status_code == 200
        assert len(rsps.calls) == 2

    def test_zero_turns_it_off(self, settings, rsps):
        client = app_with(settings, auth_cache_seconds=0).test_client()
        refused(rsps)
        refused(rsps)
        for _ in range(2):
            assert client.get("/me", headers=BOGUS).status_code == 401

    def test_it_is_bounded_and_never_holds_the_token(self, settings, rsps):
        app = app_with(settings, auth_cache_size=2)
        client = app.test_client()
        for n in range(3):
            refused(rsps)
            client.get("/me", headers={"Authorization": f"Token bogus-{n}"})
        refusals = app.extensions["auth_refusals"]
        assert len(refusals) == 2
        assert not any(b"bogus" in key for key in refusals._items)


@pytest.mark.parametrize(
    ("remote", "forwarded"),
    [
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("::FFFF:198.51.100.7", "198.51.100.7"),
        ("::ffff:c633:6407", "198.51.100.7"),
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8::7", "2001:db8::7"),
    ],
)
def test_an_ipv4_mapped_address_is_forwarded_as_ipv4(settings, rsps, remote, forwarded):
    client = app_with(settings).test_client()
    signed_in(rsps, forwarded_for=forwarded)
    headers = {"Authorization": "Token user-tok"}
    assert client.get("/me", headers=headers, environ_base={"REMOTE_ADDR": remote}).status_code == 200


def test_both_spellings_of_one_address_share_the_cached_answer(settings, rsps):
    client = app_with(settings).test_client()
    signed_in(rsps, forwarded_for="198.51.100.7")
    headers = {"Authorization": "Token user-tok"}
    for remote in ("::ffff:198.51.100.7", "198.51.100.7"):
        assert client.get("/me", headers=headers, environ_base={"REMOTE_ADDR": remote}).status_code == 200
    assert len(rsps.calls) == 1
