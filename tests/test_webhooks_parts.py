"""The pure parts: secret check, envelope parsing, idempotency keys, redaction, the registry."""

from __future__ import annotations

import json

import click
import pytest
from flask.cli import FlaskGroup, run_command

import webhooks
from webhooks import Event, Registry, derived_key, idempotency_key
from webhooks.envelope import EnvelopeError, parse_envelope
from webhooks.events import is_sensitive, redact
from webhooks.verify import WebhookAuthError, verify_secret

SECRETS = ("current-secret", "previous-secret")


@pytest.mark.parametrize(
    "header",
    [
        "Secret current-secret",
        "secret previous-secret",
        "SECRET current-secret",
        "  Secret   current-secret  ",
    ],
)
def test_verify_secret_accepts_either_secret_in_any_case(header):
    verify_secret(header, SECRETS)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Secret",
        "Secret ",
        "Token current-secret",
        "current-secret",
        "Secret current-secre",
        "Secret current-secret2",
        "Secret ünïcödé",
        "Secret \udcff",  # a lone surrogate must not become a 500
        "Secret current-secret\x00",
    ],
)
def test_verify_secret_refuses(header):
    with pytest.raises(WebhookAuthError):
        verify_secret(header, SECRETS)


def test_verify_secret_with_no_secret_configured_refuses_everything():
    for header in ("Secret ", "Secret x", None):
        with pytest.raises(WebhookAuthError):
            verify_secret(header, ("", ""))


def test_parse_envelope_makes_the_id_text():
    body = json.dumps({"id": 12, "event": "a.b", "company": "c", "data": {"x": 1}, "extra": True})
    envelope = parse_envelope(body.encode())
    assert (envelope.id, envelope.name, envelope.company, envelope.data) == ("12", "a.b", "c", {"x": 1})
    assert parse_envelope(body.replace("12", '"12"').encode()).id == "12"


def test_parse_envelope_accepts_100_characters_and_a_negative_int():
    assert parse_envelope(json.dumps({"id": "x" * 100, "event": "e", "company": "", "data": {}}).encode())
    assert parse_envelope(b'{"id": -1, "event": "e", "company": "c", "data": {}}').id == "-1"


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"id": 1}', b"\xef\xbb\xbf{}", b'{"id": Infinity}'])
def test_parse_envelope_refuses(body):
    with pytest.raises(EnvelopeError):
        parse_envelope(body)


def test_idempotency_key_is_readable_stable_and_distinct():
    event = Event(company="acme", id="42", name="transaction.execute", data={})
    assert idempotency_key(event, "transfer") == "acme:42:transfer"
    assert idempotency_key(event, "transfer") == idempotency_key(event, "transfer")
    assert idempotency_key(event, "fee") != idempotency_key(event, "transfer")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("a:b", "c", "s"), ("a", "b:c", "s")),  # colons inside parts cannot make keys collide
        (("a", "b c", "s"), ("a", "b  c", "s")),
        (("x" * 60, "y" * 60, "s"), ("x" * 60, "y" * 60, "t")),
    ],
)
def test_derived_keys_never_collide_and_stay_short(one, other):
    assert derived_key(*one) != derived_key(*other)
    for key in (derived_key(*one), derived_key(*other)):
        assert len(key) < 100
        assert key.isascii() and " " not in key


def test_sensitive_events_and_redaction():
    assert is_sensitive("user.email.verify")
    assert is_sensitive("user.password.reset")
    assert is_sensitive("mfa.sms.verify")
    assert not is_sensitive("transaction.execute")
    data = {"user": {"id": "u1"}, "otp": "123456", "nested": [{"reset_key": "k", "Token": "t", "ok": 1}]}
    assert redact(data) == {
        "user": {"id": "u1"},
        "otp": "[redacted]",
        "nested": [{"reset_key": "[redacted]", "Token": "[redacted]", "ok": 1}],
    }


def _handler_a(event, client):
    pass


def _handler_b(event, client):
    pass


def test_the_decorator_returns_the_function_unchanged_and_registers_it_for_each_name():
    registry = Registry()
    assert registry.on("a", "b")(_handler_a) is _handler_a
    registry.on("*")(_handler_b)
    registry.on("a")(_handler_a)  # twice is once
    assert registry.handlers_for("a") == [_handler_a, _handler_b]
    assert registry.handlers_for("b") == [_handler_a, _handler_b]
    assert registry.handlers_for("c") == [_handler_b]


def test_an_app_registry_adds_to_the_global_one():
    parent = Registry()
    child = Registry(parent=parent)
    parent.on("a")(_handler_a)
    child.on("a")(_handler_b)
    assert child.handlers_for("a") == [_handler_a, _handler_b]
    assert parent.handlers_for("a") == [_handler_a]


def test_on_needs_a_name():
    with pytest.raises(ValueError, match="event names"):
        Registry().on()


def test_the_global_decorator_is_exported():
    assert webhooks.on == webhooks.registry.on


def _in_context(*names: str, reload: bool | None = False) -> bool:
    root = click.Context(FlaskGroup(), info_name="flask")
    ctx = root
    for name in names:
        command = run_command if name == "run" else click.Command(name)
        ctx = click.Context(command, parent=ctx, info_name=name)
    if names == ("run",):
        ctx.params["reload"] = reload
    with ctx:
        return webhooks.serves_requests()


def test_workers_start_for_servers_and_flask_run_but_not_for_other_commands(monkeypatch):
    assert webhooks.serves_requests()  # gunicorn, tests: no click context
    assert _in_context("run")
    assert not _in_context()  # the group itself, loading the app to find a command
    assert not _in_context("webhooks", "list")
    assert not _in_context("shell")
    assert not _in_context("run", reload=True)  # the reloader's parent does not serve
    monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
    assert _in_context("run", reload=True)  # its child does
    with click.Context(click.Command("uvicorn")):
        assert webhooks.serves_requests()  # another click program serving the app
