"""The client stays home: no path sends the admin token anywhere but REHIVE_API_URL."""

import pytest

import rehive_client
from rehive_client import RehiveClient, UnsafeRehivePath
from tests.conftest import API

OK = {"status": "success", "data": {}}

HOSTILE = [
    pytest.param("http://elsewhere.test/3/admin/transactions/", id="absolute http"),
    pytest.param("https://elsewhere.test/", id="absolute https"),
    pytest.param("HTTPS://elsewhere.test/", id="scheme in capitals"),
    pytest.param("//elsewhere.test/3/", id="scheme-relative"),
    pytest.param("///elsewhere.test/3/", id="three slashes"),
    pytest.param("\\\\elsewhere.test/3/", id="backslashes"),
    pytest.param("/\\elsewhere.test/3/", id="slash backslash"),
    pytest.param("mailto:x@elsewhere.test", id="other scheme"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("elsewhere.test:443/x", id="host and port"),
    pytest.param("../admin/", id="dot-dot first"),
    pytest.param("admin/../../2/admin/", id="dot-dot inside"),
    pytest.param("admin/..", id="dot-dot last"),
    pytest.param("admin/%2e%2e/%2e%2e/x", id="encoded dot-dot"),
    pytest.param("admin/%2E%2E/x", id="encoded dot-dot in capitals"),
    pytest.param("admin/.%2e/x", id="half-encoded dot-dot"),
    pytest.param("admin/%252e%252e/x", id="double-encoded dot-dot"),
    pytest.param("admin\\..\\x", id="dot-dot with backslashes"),
    pytest.param("%2f%2felsewhere.test/", id="encoded slashes"),
    pytest.param("http%3a//elsewhere.test/", id="encoded scheme"),
    pytest.param("admin/transactions/\r\nHost: elsewhere.test", id="CRLF"),
    pytest.param("admin/transactions/%0d%0aX: y", id="encoded CRLF"),
    pytest.param("admin/\x00", id="NUL"),
    pytest.param("admin/\x7f", id="DEL"),
    pytest.param("admin/\x85", id="C1 NEL"),
    pytest.param("admin/\t", id="tab"),
    pytest.param(None, id="not a string"),
]


@pytest.fixture
def rehive():
    return RehiveClient(API, "admin-tok", backoff=0)


@pytest.mark.parametrize("path", HOSTILE)
@pytest.mark.parametrize("call", ["get", "post", "whoami"])
def test_a_path_that_could_leave_the_api_root_is_refused_before_any_request(rehive, rsps, path, call):
    with pytest.raises(UnsafeRehivePath) as info:
        if call == "get":
            rehive.get(path)
        elif call == "post":
            rehive.post(path, {"amount": 1}, idempotency_key="k")
        else:
            rehive.request("GET", path, token="user-tok")
    assert len(rsps.calls) == 0
    assert "admin-tok" not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("admin/transactions/", API + "admin/transactions/"),
        ("/admin/transactions/", API + "admin/transactions/"),
        ("auth/", API + "auth/"),
        ("admin/transactions/tx-1/", API + "admin/transactions/tx-1/"),
        ("admin/transactions/?reference=savings:tx-1", API + "admin/transactions/?reference=savings:tx-1"),
        ("admin/accounts/a.b/", API + "admin/accounts/a.b/"),
    ],
)
def test_ordinary_paths_still_go_to_the_api_root(rehive, rsps, path, url):
    rsps.get(url, json=OK)
    assert rehive.get(path) == OK


def test_the_final_guard_holds_even_if_the_checks_miss_something(rehive, rsps, monkeypatch):
    monkeypatch.setattr(rehive_client, "_check_path", lambda path: path)
    with pytest.raises(UnsafeRehivePath, match="REHIVE_API_URL"):
        rehive.get("http://elsewhere.test/3/")
    assert len(rsps.calls) == 0
