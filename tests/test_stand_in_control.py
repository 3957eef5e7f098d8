"""The stand-in's /_control/ cannot be driven by a web page the developer happens to visit."""

import pytest

from local_rehive.app import create_app


@pytest.fixture
def control():
    return create_app().test_client()


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8100",
        "LOCALHOST:8100",
        "127.0.0.1",
        "127.0.0.1:8100",
        "127.1.2.3:80",
        "[::1]:8100",
    ],
)
def test_loopback_hosts_are_served(control, host):
    assert control.get("/_control/", headers={"Host": host}).status_code == 200
    response = control.post("/_control/", json={"throttle": True}, headers={"Host": host})
    assert response.status_code == 200
    assert response.json["throttle"] is True


@pytest.mark.parametrize(
    "host",
    [
        "evil.test",
        "evil.test:8100",
        "localhost.evil.test",
        "127.0.0.1.evil.test",
        "10.0.0.1:8100",
        "192.168.1.10",
        "[::2]:8100",
        "[::1]x",
        "localhost:http",
        "",
    ],
)
def test_a_foreign_host_is_refused_and_changes_nothing(control, host):
    for response in (
        control.get("/_control/", headers={"Host": host}),
        control.post("/_control/", json={"throttle": True}, headers={"Host": host}),
    ):
        assert response.status_code == 403
        assert response.json["status"] == "error"
    assert control.get("/_control/").json["throttle"] is False


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/_control/", '{"throttle": true}', "text/plain"),
        ("/_control/", '{"throttle": true}', "text/plain;charset=UTF-8"),
        ("/_control/", "throttle=true", "application/x-www-form-urlencoded"),
        ("/_control/", '{"throttle": true}', "multipart/form-data; boundary=x"),
        ("/_control/", '{"throttle": true}', None),
        ("/_control/reset", "", None),
        ("/_control/tokens", '{"company": "demo", "user": "alice@demo.test"}', "text/plain"),
    ],
)
def test_a_body_that_is_not_declared_json_is_refused_and_changes_nothing(control, path, body, content_type):
    control.post("/_control/", json={"latency_ms": 5})
    headers = {"Content-Type": content_type} if content_type else {}
    response = control.post(path, data=body, headers=headers)
    assert response.status_code == 403
    assert response.json["status"] == "error"
    assert control.get("/_control/").json["latency_ms"] == 5
