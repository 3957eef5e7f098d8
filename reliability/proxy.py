"""Check 7, proxy: real nginx with deploy/nginx.conf in front of gunicorn, as the README's Production runs it.

nginx (TLS, a certificate made at run time for PUBLIC_NAME) proxies to gunicorn started with
TRUSTED_PROXIES=1 and WEBHOOK_ALLOWED_IPS=127.0.0.2; clients connect from other loopback addresses than
nginx's own 127.0.0.1, so "the client's address" and "the proxy's address" differ. The row shows:

- slow clients: 40 connections sending their headers one byte a second, for 20 s (reconnecting when
  nginx cuts them off), while `/healthz` and webhook deliveries through nginx must each be answered
  within 1 s. The same 40 clients against a second gunicorn with no proxy are shown for comparison
  (bounded, never failing the row): that is what the proxy is for.
- Rehive (the stand-in) receives the client's address in X-Forwarded-For, not nginx's and not one
  the client wrote itself;
- pagination links carry the public scheme and host (https://PUBLIC_NAME:port), and a Host of another
  name gets no answer at all;
- the webhook allow-list judges the client's address: 127.0.0.2 accepted, 127.0.0.3 refused (also
  when it claims to be 127.0.0.2), nginx's own address refused; a body over WEBHOOK_MAX_BYTES and a
  broken request line are refused by nginx itself with JSON 413 and 400.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from devtools.processes import Process, wait_for
from reliability.nginx import Proxy, start_proxy
from reliability.stack import COMPANY, TIMEOUT, Result, Run, inbox_rows, progress

NAME = "proxy"
CLIENT = "127.0.0.2"  # the allowed client: another loopback address than nginx's 127.0.0.1
STRANGER = "127.0.0.3"
SLOW_CLIENTS = 40
HOLD_SECONDS = 20.0
BUDGET = 1.0  # seconds within which every probe through nginx must be answered
PROBE_EVERY = 0.5  # seconds between two probes of one kind
PROBE_TIMEOUT = 5.0  # a probe through nginx waits this long, so a late answer is measured, not lost
DIRECT_TIMEOUT = 3.0  # a probe of gunicorn without nginx gives up after this long
HEADER_TIMEOUT = 5.0  # client_header_timeout in deploy/nginx.conf
SLOW_HEADER = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000


@dataclass
class SlowClients:
    """`count` connections that send SLOW_HEADER one byte a second until `until`, reconnecting when cut."""

    connect: Callable[[], socket.socket]
    count: int
    until: float
    opened: int = 0
    failed_connects: int = 0
    cuts: list[float] = field(default_factory=list)  # how long each cut connection had lasted
    longest_open: float = 0.0

    def run(self) -> None:
        """Hold the connections until `until`, then close them (runs in its own thread)."""
        conns: list[list] = [[None, 0, 0.0] for _ in range(self.count)]  # socket, bytes sent, opened at
        try:
            while time.monotonic() < self.until:
                tick = time.monotonic()
                for conn in conns:
                    if conn[0] is None:
                        self._open(conn)
                    if conn[0] is not None:
                        self._send_one(conn)
                self._reap(conns)
                time.sleep(max(0.0, min(1.0 - (time.monotonic() - tick), self.until - time.monotonic())))
        finally:
            for sock, _sent, started in conns:
                if sock is not None:
                    self.longest_open = max(self.longest_open, time.monotonic() - started)
                    sock.close()

    def _open(self, conn: list) -> None:
        try:
            conn[:] = [self.connect(), 0, time.monotonic()]
            self.opened += 1
        except OSError:
            self.failed_connects += 1

    def _send_one(self, conn: list) -> None:
        sock, sent, _started = conn
        try:
            sock.send(SLOW_HEADER[sent : sent + 1])
            conn[1] = (sent + 1) % len(SLOW_HEADER)
        except OSError:
            self._cut(conn)

    def _reap(self, conns: list[list]) -> None:
        """Close the connections the server closed (or answered: a timeout's 408)."""
        open_socks = [conn[0] for conn in conns if conn[0] is not None]
        readable, _, _ = select.select(open_socks, [], [], 0) if open_socks else ([], [], [])
        for conn in conns:
            if conn[0] in readable:
                self._cut(conn)

    def _cut(self, conn: list) -> None:
        sock, _sent, started = conn
        lasted = time.monotonic() - started
        self.cuts.append(lasted)
        self.longest_open = max(self.longest_open, lasted)
        sock.close()
        conn[:] = [None, 0, 0.0]


@dataclass
class Probes:
    """One kind of request repeated every PROBE_EVERY until `until`: statuses and latencies."""

    name: str
    send: Callable[[], int]  # one request; its status (raises when there is no answer)
    until: float
    latencies: list[float] = field(default_factory=list)
    statuses: list[int | str] = field(default_factory=list)

    def run(self) -> None:
        """Probe until `until` (runs in its own thread)."""
        while time.monotonic() < self.until:
            started = time.monotonic()
            try:
                status: int | str = self.send()
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
            self.latencies.append(time.monotonic() - started)
            self.statuses.append(status)
            time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))

    def within(self, expected: int, budget: float = BUDGET) -> int:
        """Return how many probes were answered `expected` within `budget` seconds."""
        return sum(s == expected and t <= budget for s, t in zip(self.statuses, self.latencies, strict=True))

    def max_ms(self) -> str:
        """Return the slowest probe's latency, as `12 ms`."""
        return f"{max(self.latencies, default=0) * 1000:.0f} ms"


def _port(process: Process) -> int:
    return int(process.url.rsplit(":", 1)[1])


def _delivery(rng: random.Random) -> bytes:
    """Return one new event that needs no Rehive call to be stored."""
    return json.dumps(
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event": "transaction.create",
            "company": COMPANY,
            "data": {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "tx_type": "credit"},
        }
    ).encode()


def _auth_calls(run: Run) -> list[dict]:
    """Return every /3/auth/ call the stand-in saw (JSON and a loopback Host, as /_control/ asks)."""
    assert run.rehive is not None
    response = run.session.get(
        f"{run.rehive.url}/_control/auth-calls", headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    response.raise_for_status()
    return response.json()


class Row:
    """The row's figures and problems as they are found."""

    def __init__(self) -> None:
        self.figures: list[str] = []
        self.problems: list[str] = []

    def check(self, ok: bool, figure: str, problem: str) -> None:
        """Add `figure`; add `problem` too when not `ok`."""
        self.figures.append(figure)
        if not ok:
            self.problems.append(problem)


def _forwarded_for(run: Run, proxy: Proxy, row: Row) -> dict:
    """Rehive sees the client's address; return the first page of alice's list (for the links)."""
    token = run.fresh_token("alice@demo.test")  # never seen by the service: it must ask /3/auth/
    before = len(_auth_calls(run))
    answer = proxy.request(
        "GET",
        "/custom/transactions/?page_size=1",
        [("Authorization", f"Token {token}"), ("X-Forwarded-For", "34.91.230.165")],
        source=CLIENT,
        seen=run.seen,
    )
    seen = sorted({str(call.get("forwarded_for")) for call in _auth_calls(run)[before:]})
    row.check(
        answer.status == 200 and seen == [CLIENT],
        f"Rehive saw X-Forwarded-For {', '.join(seen) or 'nothing'} for a client at {CLIENT}"
        " that wrote 34.91.230.165",
        f"custom list {answer.status}; the stand-in saw X-Forwarded-For {seen}, not [{CLIENT!r}]",
    )
    return json.loads(answer.body) if answer.status == 200 else {}


def _links(run: Run, proxy: Proxy, row: Row, first: dict) -> None:
    """Pagination links name the public https host; following one works; another Host gets nothing."""
    token = run.login("alice@demo.test")
    prefix = f"{proxy.url}/custom/transactions/?"
    following = (first.get("data") or {}).get("next") or ""
    previous = ""
    if following.startswith(prefix):
        parts = urlsplit(following)
        answer = proxy.request(
            "GET",
            f"{parts.path}?{parts.query}",
            [("Authorization", f"Token {token}")],
            source=CLIENT,
            host=parts.netloc,
            seen=run.seen,
        )
        previous = (
            (json.loads(answer.body).get("data") or {}).get("previous") or "" if answer.status == 200 else ""
        )
    row.check(
        following.startswith(prefix) and previous.startswith(prefix),
        f"links {following[: len(prefix) - 1]}…: {'yes' if following.startswith(prefix) else 'no'}",
        f"next {following[:100]!r} / previous {previous[:100]!r} do not start with {prefix!r}",
    )
    try:
        stranger = proxy.request(
            "GET", "/custom/transactions/", [("Authorization", f"Token {token}")], host="evil.example.test"
        )
        refused = f"{stranger.status}"
    except http.client.RemoteDisconnected:
        refused = "no answer"
    row.check(
        refused == "no answer",
        f"another Host: {refused}",
        f"a Host of another name was answered {refused}",
    )


def _allow_list(run: Run, proxy: Proxy, row: Row, rng: random.Random) -> None:
    """WEBHOOK_ALLOWED_IPS judges the client's address, whatever it claims; nginx refuses big bodies."""
    headers = [
        ("Authorization", f"Secret {run.canaries.webhook_secret}"),
        ("Content-Type", "application/json"),
    ]
    cases = [
        (CLIENT, [], 202),
        (STRANGER, [], 403),
        (STRANGER, [("X-Forwarded-For", CLIENT)], 403),
        ("127.0.0.1", [], 403),  # nginx's own address is no client
    ]
    got = []
    for source, extra, expected in cases:
        answer = proxy.request(
            "POST", "/webhooks/", headers + extra, _delivery(rng), source=source, seen=run.seen
        )
        got.append(f"{source}{' claiming ' + CLIENT if extra else ''} {answer.status}")
        if answer.status != expected:
            row.problems.append(f"a delivery from {source} {extra} got {answer.status}, not {expected}")
    row.figures.append("allow-list " + CLIENT + ": " + ", ".join(got))
    # nginx's own refusals are JSON in the envelope too: a body over the limit, a broken request line.
    too_big = proxy.request(
        "POST",
        "/webhooks/",
        [*headers, ("Content-Length", str(1_048_577))],
        source=CLIENT,
        length=False,
        seen=run.seen,
    )
    broken = proxy.request("GET", "/\x01", source=CLIENT, seen=run.seen)
    own = [(too_big, 413), (broken, 400)]
    json_ok = [
        answer.status == status and (answer.header("Content-Type") or "").startswith("application/json")
        for answer, status in own
    ]
    row.check(
        all(json_ok),
        f"nginx's own 413 (1 MiB + 1 byte) and 400: {too_big.status}, {broken.status}"
        f" {'JSON' if all(json_ok) else 'not JSON'}",
        f"nginx answered {too_big.status} {too_big.header('Content-Type')} to a body over 1 MiB and"
        f" {broken.status} {broken.header('Content-Type')} to a broken request line",
    )


def _slow_clients(run: Run, proxy: Proxy, direct: Process, row: Row, rng: random.Random) -> None:
    """Hold SLOW_CLIENTS against nginx and against a bare gunicorn at once; probe both meanwhile."""
    direct_port = _port(direct)

    def healthz() -> int:
        return proxy.request("GET", "/healthz", source=CLIENT, timeout=PROBE_TIMEOUT, seen=run.seen).status

    def webhook() -> int:
        headers = [
            ("Authorization", f"Secret {run.canaries.webhook_secret}"),
            ("Content-Type", "application/json"),
        ]
        body = _delivery(rng)
        return proxy.request(
            "POST", "/webhooks/", headers, body, source=CLIENT, timeout=PROBE_TIMEOUT, seen=run.seen
        ).status

    def healthz_direct() -> int:
        with socket.create_connection(("127.0.0.1", direct_port), timeout=DIRECT_TIMEOUT) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            response = http.client.HTTPResponse(sock, method="GET")
            response.begin()
            response.read()
            return response.status

    stored_before = inbox_rows(run.workdir / "proxy.sqlite3")
    start = time.monotonic()
    until = start + HOLD_SECONDS
    slow = SlowClients(lambda: proxy.connect(timeout=5), SLOW_CLIENTS, until)
    bare = SlowClients(
        lambda: socket.create_connection(("127.0.0.1", direct_port), timeout=5), SLOW_CLIENTS, until
    )
    holders = [threading.Thread(target=clients.run, daemon=True) for clients in (slow, bare)]
    for thread in holders:
        thread.start()
    # The probes start once every slow client has a connection open (and has sent its first byte).
    wait_for(
        lambda: slow.opened >= SLOW_CLIENTS and bare.opened >= SLOW_CLIENTS, timeout=10, what="slow clients"
    )
    probes = [
        Probes("healthz", healthz, until),
        Probes("webhook", webhook, until),
        Probes("direct", healthz_direct, until),
    ]
    probers = [threading.Thread(target=probe.run, daemon=True) for probe in probes]
    for thread in probers:
        thread.start()
    for thread in holders + probers:
        thread.join(timeout=HOLD_SECONDS + 30)
    held = time.monotonic() - start
    health, hooks, direct_probes = probes

    stored = inbox_rows(run.workdir / "proxy.sqlite3") - stored_before
    accepted = hooks.statuses.count(202)
    # deploy/nginx.conf's client_header_timeout (5 s) ends each slow client; they come back at once.
    longest_cut = max(slow.cuts, default=0.0)
    row.check(
        slow.opened > SLOW_CLIENTS and not slow.failed_connects and longest_cut <= HEADER_TIMEOUT + 2.5,
        f"{SLOW_CLIENTS} slow-header clients held {held:.0f} s ({slow.opened} connections; nginx cut"
        f" {len(slow.cuts)}, after {min(slow.cuts, default=0):.1f} to {longest_cut:.1f} s)",
        f"slow clients: {slow.opened} connections ({slow.failed_connects} refused), cut after at most"
        f" {longest_cut:.1f} s (nginx's header timeout is {HEADER_TIMEOUT:.0f} s)",
    )
    for probe, expected in ((health, 200), (hooks, 202)):
        ok = probe.within(expected)
        row.check(
            len(probe.statuses) >= HOLD_SECONDS / PROBE_EVERY / 2 and ok == len(probe.statuses),
            f"{probe.name} through nginx {expected} within {BUDGET:.0f} s {ok}/{len(probe.statuses)}"
            f" (max {probe.max_ms()})",
            f"{probe.name}: {len(probe.statuses) - ok} of {len(probe.statuses)} not {expected} within"
            f" {BUDGET:.0f} s: {sorted(set(map(str, probe.statuses)))}",
        )
    row.check(stored == accepted, f"stored {stored}", f"{accepted} deliveries accepted, {stored} stored")
    # Shown, never judged: the same clients against gunicorn alone.
    tried = len(direct_probes.statuses)
    unanswered = tried - direct_probes.within(200, DIRECT_TIMEOUT)
    row.figures.append(
        f"without nginx: /healthz within {BUDGET:.0f} s {direct_probes.within(200)}/{tried}"
        f" (max {direct_probes.max_ms()}, {unanswered} not answered in {DIRECT_TIMEOUT:.0f} s)"
    )


def run(run: Run) -> Result:
    """Start gunicorn behind nginx (and one alone), then check each promise of the proxy."""
    rng = random.Random(run.seed)
    behind = run.start_service("proxy", run.env("proxy", TRUSTED_PROXIES="1", WEBHOOK_ALLOWED_IPS=CLIENT))
    direct = run.start_service("proxy-direct", run.env("proxy-direct"))
    proxy = start_proxy(_port(behind), run.workdir / "nginx")
    run.processes.append(proxy.process)
    run.logs.extend(proxy.logs)  # scanned by the leak check too
    row = Row()
    try:
        progress(NAME, f"holding {SLOW_CLIENTS} slow-header clients for {HOLD_SECONDS:.0f} s")
        _slow_clients(run, proxy, direct, row, rng)
        first = _forwarded_for(run, proxy, row)
        _links(run, proxy, row, first)
        _allow_list(run, proxy, row, rng)
    finally:
        for process in (proxy.process, direct, behind):
            with contextlib.suppress(Exception):
                process.stop(timeout=10)
    figures = "; ".join(row.figures)
    progress(NAME, figures)
    return Result(NAME, figures, not row.problems, tuple(row.problems[:10]))
