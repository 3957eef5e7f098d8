"""Check 3, hostile input: crafted requests over real sockets; each gets a 4xx JSON error, none is stored.

Requests are written byte for byte (a client library would fix most of them before sending): bad and
missing credentials, broken and deeply nested JSON, huge bodies, wrong types, unknown and repeated
parameters, path tricks, very long URLs, other-company events, non-UTF-8 bytes, header injection and
every other method. The only answer allowed that is not a 4xx JSON error is OPTIONS' automatic 200,
which the README documents as the CORS preflight.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from reliability.stack import COMPANY, RawAnswer, Result, Run, by_status, inbox_rows, progress

NAME = "hostile"
CUSTOM = "/custom/transactions/"
WEBHOOKS = "/webhooks/"
JSON = [("Content-Type", "application/json")]
NULL = object()  # a field set to JSON null (None deletes the field)


@dataclass(frozen=True)
class Probe:
    """One crafted request and what it tries."""

    name: str
    request: bytes
    options: bool = False  # an OPTIONS request: the automatic 200 is the documented answer


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def build(
    method: str | bytes,
    target: str | bytes,
    headers: Sequence[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    *,
    host: str | None = "127.0.0.1",
    length: bool = True,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """Return an HTTP/1.1 request exactly as given (Host and Content-Length added unless told not to)."""
    lines = [_bytes(method) + b" " + _bytes(target) + b" " + version]
    if host:
        lines.append(b"Host: " + host.encode())
    lines += [_bytes(name) + b": " + _bytes(value) for name, value in headers]
    if length and (body or _bytes(method) in (b"POST", b"PUT", b"PATCH")):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def envelope(**changes: object) -> dict:
    """Return a well-formed delivery of our company, with `changes` applied (None deletes a field)."""
    body: dict = {
        "id": "hostile-0",
        "event": "transaction.execute",
        "company": COMPANY,
        "data": {"id": "tx", "tx_type": "credit", "status": "Complete", "amount": 1000},
    }
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = None if value is NULL else value
    return body


def _custom_probes(alice: str, tokens: dict[str, str]) -> Iterator[Probe]:
    def get(name: str, target: str | bytes, headers: list | None = None, **kw: Any) -> Probe:
        return Probe(f"custom: {name}", build("GET", target, headers or [], **kw))

    auth = [("Authorization", f"Token {alice}")]
    # Credentials.
    for name, value in [
        ("empty Authorization", ""),
        ("scheme only", "Token"),
        ("scheme and a space", "Token "),
        ("Bearer", f"Bearer {alice}"),
        ("Basic", "Basic YWxpY2U6YWxpY2UtcGFzcy0xMjM="),
        ("three parts", f"Token {alice} extra"),
        ("comma", f"Token,{alice}"),
        ("no scheme", alice),
        ("Secret scheme", "Secret whatever"),
        ("token of 600 chars", "Token " + "a" * 600),
        ("non-ASCII token", "Token caf\u00e9".encode()),
        ("non-UTF-8 token", b"Token \xff\xfe\xfd"),
        ("unknown token", "Token " + "0" * 64),
        ("expired token", f"Token {tokens['expired']}"),
        ("logged-out token", f"Token {tokens['logged_out']}"),
        ("other company's user", f"Token {tokens['mallory']}"),
        ("other company's service token", "Token local-other-admin-token"),
        ("quoted token", f'Token "{alice}"'),
        ("scheme with a colon", f"Token: {alice}"),
    ]:
        yield get(name, CUSTOM, [("Authorization", value)])
    yield get("no Authorization", CUSTOM)
    yield get("Authorization in another header", CUSTOM, [("X-Authorization", f"Token {alice}")])
    yield get("token in the query", f"{CUSTOM}?token={alice}")
    yield get(
        "two Authorization headers",
        CUSTOM,
        [("Authorization", "Token x"), ("Authorization", f"Token {alice}")],
    )
    # Parameters (as alice).
    for query in [
        "foo=1",
        "user__in=x",
        "USER=x",
        "User=x",
        "user[]=x",
        "user%5B%5D=x",
        "search=x",
        "metadata__key=1",
        "amount__abs=1",
        "partner=x",
        "page_size[]=1",
        "__proto__=1",
        "page=1&page=2",
        "status=Complete&status=Failed",
        "user=a&user=b",
        "orderby=created&orderby=amount",
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "page=1e3",
        "page=%201",
        "page=",
        "page=0x10",
        "page=%D9%A1",  # an Arabic-Indic one
        "page=%EF%BC%91",  # a full-width one
        "page=9999999999",
        "page=99999999",
        "page_size=0",
        "page_size=-5",
        "page_size=abc",
        "page_size=%00",
        "status=" + "x" * 300,
        "orderby=" + "-" * 257,
        "amount__gt=abc",
        "created__lt=yesterday",
        "executed__gte=1e99",
        "partner__isnull=maybe",
        "&".join(f"f{n}=1" for n in range(200)),
    ]:
        yield get(f"?{query[:40]}", f"{CUSTOM}?{query}", auth)
    # Methods.
    for method in ("POST", "PUT", "PATCH", "DELETE", "TRACE", "FOO"):
        yield Probe(f"custom: {method}", build(method, CUSTOM, auth, b"{}"))
    yield Probe("custom: HEAD without a token", build("HEAD", CUSTOM))
    yield Probe("custom: lower-case get", build("get", CUSTOM, auth))
    yield Probe("custom: OPTIONS", build("OPTIONS", CUSTOM), options=True)
    # Paths, without a token: none may reach a view that answers without one.
    for target in [
        "/custom/transactions/../../webhooks/",
        "/custom/%2e%2e/%2e%2e/webhooks/",
        "/custom/transactions/..%2f..%2fwebhooks/",
        "//custom/transactions/",
        "/custom//transactions/",
        "/custom/transactions//",
        "/custom/transactions%2F",
        "/custom%2Ftransactions/",
        "/CUSTOM/TRANSACTIONS/",
        "/custom/transactions/x",
        "/custom/transactions/%00",
        "/custom/transactions/;x=1",
        "/custom/./transactions/",
        "/custom/transactions\\",
        "/custom/transactions/#frag",
        "/healthz/../custom/transactions/",
        b"/custom/transactions/\xc3\xa9",
        b"/custom/transactions/\xff",
        "/custom/transactions/" + "a" * 3_000,
        "/custom/transactions/?" + "a=" + "b" * 3_000,
        "/custom/transactions/" + "a" * 9_000,
        "http://127.0.0.1/custom/transactions/",
        "http://rehive.example/custom/transactions/",
        "*",
    ]:
        yield get(f"path {target[:50]!r}", target)
    # Headers.
    yield get("no Host", CUSTOM, host=None)
    yield get("HTTP/1.0", CUSTOM, version=b"HTTP/1.0")
    yield get("bad HTTP version", CUSTOM, auth, version=b"HTTP/9.9")
    yield Probe(
        "custom: header line without a colon",
        build("GET", CUSTOM, []).replace(b"Connection: close", b"Connection: close\r\nNoColonHere"),
    )
    yield get("header name with a space", CUSTOM, [("Bad Name", "x")])
    yield get("NUL in a header value", CUSTOM, [("X-Test", b"a\x00b")])
    yield get("bare CR in a header value", CUSTOM, [("X-Test", b"a\rAuthorization: Token x")])
    yield get("bare LF injecting a header", CUSTOM, [("X-Test", b"a\nAuthorization: Token x")])
    yield get("obs-fold continuation", CUSTOM, [("X-Test", b"a\r\n b")])
    yield get("header of 10,000 bytes", CUSTOM, [("X-Big", "a" * 10_000)])
    yield get("150 headers", CUSTOM, [(f"X-H{n}", "1") for n in range(150)])
    yield get("Host of Rehive", CUSTOM, [("X-Forwarded-Host", "rehive.example")])
    yield get("non-UTF-8 header value", CUSTOM, [("X-Test", b"\xff\xfe")])
    yield get(
        "Content-Length and Transfer-Encoding",
        CUSTOM,
        [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
        length=False,
    )
    yield get("two Content-Lengths", CUSTOM, [("Content-Length", "0"), ("Content-Length", "5")], length=False)
    yield get("negative Content-Length", CUSTOM, [("Content-Length", "-1")], length=False)
    yield get("Transfer-Encoding gzip", CUSTOM, [("Transfer-Encoding", "gzip, chunked")], length=False)


def _webhook_probes(secret: str, alice: str) -> Iterator[Probe]:
    good = json.dumps(envelope()).encode()
    valid = [("Authorization", f"Secret {secret}")]

    def post(name: str, body: bytes, headers: list | None = None, target: str = WEBHOOKS, **kw: Any) -> Probe:
        all_headers = (valid if headers is None else headers) + JSON
        return Probe(f"webhook: {name}", build("POST", target, all_headers, body, **kw))

    # Credentials, with a well-formed body: none may be stored.
    for name, value in [
        ("empty Authorization", ""),
        ("scheme only", "Secret"),
        ("scheme and a space", "Secret "),
        ("wrong secret", "Secret wrong"),
        ("secret with one more character", "Secret " + "x" + "y" * (len(secret) - 1)),
        ("secret of another length", "Secret " + "s" * 10),
        ("Token scheme", "Token whatever"),
        ("Bearer scheme", "Bearer whatever"),
        ("Basic", "Basic c2VjcmV0OnNlY3JldA=="),
        ("a user token", f"Token {alice}"),
        ("Secret with a user token", f"Secret {alice}"),
        ("non-ASCII secret", "Secret caf\u00e9".encode()),
        ("non-UTF-8 secret", b"Secret \xff\xfe"),
        ("secret without a scheme", "s" * 32),
        ("Secret=", "Secret=whatever"),
        ("tab after the scheme", "Secret\twhatever"),
        ("two words", "Secret a b"),
    ]:
        yield post(name, good, [("Authorization", value)])
    yield post("no Authorization", good, [])
    yield post("secret in another header", good, [("X-Rehive-Secret", "whatever")])
    yield post(
        "two Authorization headers", good, [("Authorization", "Secret a"), ("Authorization", "Secret b")]
    )
    # Content types (valid secret).
    for ctype in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "json",
    ):
        yield Probe(
            f"webhook: Content-Type {ctype!r}",
            build("POST", WEBHOOKS, [*valid, ("Content-Type", ctype)], good),
        )
    yield Probe("webhook: no Content-Type", build("POST", WEBHOOKS, valid, good))
    yield Probe(
        "webhook: UTF-16 JSON",
        build(
            "POST",
            WEBHOOKS,
            [*valid, ("Content-Type", "application/json; charset=utf-16")],
            good.decode().encode("utf-16"),
        ),
    )
    yield Probe(
        "webhook: gzip body",
        build("POST", WEBHOOKS, [*valid, *JSON, ("Content-Encoding", "gzip")], gzip.compress(good)),
    )
    # Broken JSON and the wrong shape.
    for name, body in [
        ("empty body", b""),
        ("whitespace", b"   "),
        ("null", b"null"),
        ("array", b"[]"),
        ("number", b"1"),
        ("string", b'"x"'),
        ("true", b"true"),
        ("unclosed", b"{"),
        ("trailing garbage", good + b"x"),
        ("two objects", good + good),
        ("single quotes", good.replace(b'"', b"'")),
        ("NaN", b'{"id": NaN, "event": "e", "company": "demo", "data": {}}'),
        ("Infinity", b'{"id": 1, "event": "e", "company": "demo", "data": {"a": Infinity}}'),
        ("number out of float range", b'{"id": 1, "event": "e", "company": "demo", "data": {"a": 1e999999}}'),
        (
            "5000-digit integer id",
            b'{"id": ' + b"9" * 5000 + b', "event": "e", "company": "demo", "data": {}}',
        ),
        ("nested 65 deep", _nested(65)),
        ("nested 1,000 deep", _nested(1_000)),
        ("nested 100,000 deep", _nested(100_000)),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + good),
        ("non-UTF-8 byte in a string", good.replace(b"hostile-0", b"hostile-\xff")),
        ("overlong UTF-8 slash", good.replace(b"hostile-0", b"hostile-\xc0\xaf")),
        ("Latin-1 text", json.dumps(envelope(event="caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9")),
        ("duplicate company key, other last", good[:-1] + b', "company": "other"}'),
        ("comment", b"/* hi */" + good),
    ]:
        yield post(name, body)
    # Fields of the wrong type, missing or too long.
    for name, changes in [
        ("no id", {"id": None}),
        ("no event", {"event": None}),
        ("no company", {"company": None}),
        ("no data", {"data": None}),
        ("id null", {"id": NULL}),
        ("id true", {"id": True}),
        ("id float", {"id": 1.5}),
        ("id list", {"id": [1]}),
        ("id object", {"id": {"a": 1}}),
        ("id empty", {"id": ""}),
        ("id of 101 chars", {"id": "i" * 101}),
        ("id a lone surrogate", {"id": "\ud800"}),
        ("event null", {"event": NULL}),
        ("event number", {"event": 1}),
        ("event empty", {"event": ""}),
        ("event of 101 chars", {"event": "e" * 101}),
        ("event a lone surrogate", {"event": "transaction.\udfff"}),
        ("event list", {"event": ["transaction.execute"]}),
        ("company number", {"company": 1}),
        ("company null", {"company": NULL}),
        ("company list", {"company": [COMPANY]}),
        ("data list", {"data": []}),
        ("data string", {"data": "x"}),
        ("data number", {"data": 1}),
        ("data null", {"data": NULL}),
    ]:
        yield post(name, json.dumps(envelope(**changes)).encode())
    # Other companies' events, well formed and with our secret.
    for company in ("other", "DEMO", " demo", "demo ", "demo\u0000", "\uff44\uff45\uff4d\uff4f", ""):
        for event in ("transaction.execute", "user.create"):
            yield post(
                f"company {company!r} {event}", json.dumps(envelope(company=company, event=event)).encode()
            )
    # Sizes.
    big = json.dumps(envelope(data={"pad": "x" * 1_048_576})).encode()
    yield post("body over 1 MiB", big)
    yield post("Content-Length of 1 TB", good, [*valid, ("Content-Length", str(10**12))], length=False)
    yield post(
        "chunked body over 1 MiB", _chunked(big), [*valid, ("Transfer-Encoding", "chunked")], length=False
    )
    yield post(
        "chunked: a 1 MiB object, then more bytes",
        _chunked(_exactly(1_048_576) + b"trailing bytes past the limit"),
        [*valid, ("Transfer-Encoding", "chunked")],
        length=False,
    )
    yield post("Content-Length shorter than the body", good, [*valid, ("Content-Length", "5")], length=False)
    yield post("Content-Length not a number", good, [*valid, ("Content-Length", "abc")], length=False)
    yield post(
        "Content-Length and Transfer-Encoding",
        b"0\r\n\r\n",
        [*valid, ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        length=False,
    )
    # Methods.
    for method in ("GET", "PUT", "PATCH", "DELETE", "HEAD", "TRACE"):
        yield Probe(f"webhook: {method}", build(method, WEBHOOKS, [*valid, *JSON], good))
    yield Probe("webhook: OPTIONS", build("OPTIONS", WEBHOOKS), options=True)
    # Paths that try to reach the receiver without the secret, with a well-formed body.
    for target in [
        "/custom/transactions/../../webhooks/",
        "/custom/%2e%2e/%2e%2e/webhooks/",
        "/webhooks/..",
        "/webhooks/%2e%2e/webhooks/",
        "//webhooks/",
        "/webhooks//",
        "/webhooks%2F",
        "/WEBHOOKS/",
        "/webhooks/x",
        "/webhooks/;x",
        "/webhooks/?company=demo",
        "/webhooks/" + "a" * 9_000,
        "http://127.0.0.1/webhooks/",
    ]:
        yield post(
            f"path {target[:40]!r} with a user token", good, [("Authorization", f"Token {alice}")], target
        )
        yield post(f"path {target[:40]!r} without credentials", good, [], target)


def _exactly(size: int) -> bytes:
    """Return a well-formed delivery of our company of exactly `size` bytes."""
    body = envelope(id="hostile-exact", data={"pad": ""})
    short = len(json.dumps(body).encode())
    body["data"]["pad"] = "x" * (size - short)
    return json.dumps(body).encode()


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def _nested(depth: int) -> bytes:
    return b'{"id": 1, "event": "e", "company": "demo", "data": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


def _verdict(probe: Probe, answer: RawAnswer | None) -> str | None:
    """Return what is wrong with an answer, or None when it is a 4xx JSON error (or OPTIONS' 200)."""
    if answer is None:
        return "no answer"
    if probe.options:
        return None if answer.status == 200 else f"OPTIONS answered {answer.status}"
    if not 400 <= answer.status < 500:
        return f"status {answer.status}"
    ctype = answer.header("Content-Type") or ""
    if not ctype.startswith("application/json"):
        return f"{answer.status} with Content-Type {ctype!r}"
    if probe.request.startswith(b"HEAD "):
        return None  # no body, by definition
    try:
        body = json.loads(answer.body)
    except ValueError:
        return f"{answer.status} with a body that is not JSON"
    if not (
        isinstance(body, dict) and body.get("status") == "error" and isinstance(body.get("message"), str)
    ):
        return f"{answer.status} not in the error envelope: {answer.body[:80]!r}"
    return None


def run(run: Run) -> Result:
    """Send every probe, then count answers by status and check the inbox did not grow."""
    service = run.shared_service()
    database = run.workdir / "service.sqlite3"
    alice = run.login("alice@demo.test")
    logged_out = run.fresh_token("bob@demo.test")
    run.session.post(
        f"{run.rehive.url}/3/auth/logout/", headers={"Authorization": f"Token {logged_out}"}, timeout=10
    ).raise_for_status()
    tokens = {
        "expired": run.fresh_token("alice@demo.test", expires_in=0),
        "logged_out": logged_out,
        "mallory": run.login("mallory@other.test"),
    }
    probes = [*_custom_probes(alice, tokens), *_webhook_probes(run.canaries.webhook_secret, alice)]
    before = inbox_rows(database)
    progress(NAME, f"{len(probes)} crafted requests to {service.url}; inbox holds {before} rows")
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    lines = []
    html: list[str] = []  # refused by gunicorn's own parser, before the app, with an HTML page
    for probe in probes:
        try:
            answer: RawAnswer | None = run.raw(probe.request, probe.name)
        except OSError as exc:
            answer = None
            problem = f"no answer ({type(exc).__name__})"
        else:
            problem = _verdict(probe, answer)
        statuses[str(answer.status) if answer else "none"] += 1
        if (
            problem
            and answer is not None
            and answer.header("Content-Type") == "text/html"
            and answer.status >= 400
        ):
            html.append(f"{probe.name} ({answer.status})")
        elif problem:
            problems.append(f"{probe.name}: {problem}")
        lines.append(
            f"{answer.status if answer else '-'}\t{(answer.header('Content-Type') if answer else '') or ''}\t"
            f"{probe.name}\t{(answer.body[:120] if answer else b'')!r}"
        )
    after = inbox_rows(database)
    (run.workdir / "hostile.tsv").write_text("\n".join(lines) + "\n")
    figures = (
        f"{len(probes)} requests; by status: {by_status(statuses)};"
        f" not a 4xx JSON error: {len(problems) + len(html)} ({len(html)} of them gunicorn's own HTML"
        " error pages);"
        f" inbox rows before/after: {before}/{after}"
    )
    notes = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
    if html:
        notes.append("gunicorn answered in HTML (before the app): " + "; ".join(html))
    if after != before:
        notes.append(f"{after - before} rows were stored")
    return Result(NAME, figures, not (problems or html) and after == before, tuple(notes))
