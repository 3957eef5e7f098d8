"""What every check shares: the canaries, the servers it starts, and a record of every answer seen."""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from devtools.processes import Process, listening_socket, service_env, start_local_rehive, start_service

# The stand-in accepts only its seeded service token as an admin token and cannot be given another
# value, so that token is the admin canary: a string that must never reach an answer, a log or a row.
ADMIN_TOKEN = "local-demo-admin-token"  # noqa: S105 - the stand-in's published fixture, not a secret
COMPANY = "demo"
PASSWORDS = {
    "admin@demo.test": "admin-pass-123",
    "alice@demo.test": "alice-pass-123",
    "bob@demo.test": "bob-pass-123",
    "mallory@other.test": "mallory-pass-123",
}
TIMEOUT = 15.0
# Set, even to their defaults, so a developer's environment cannot change the run.
PINNED_SETTINGS = {
    "WEBHOOK_WORKER": "thread",
    "WEBHOOK_ALLOWED_IPS": "",
    "TRUSTED_PROXIES": "0",
    "CORS_ORIGINS": "",
    "AUTH_CACHE_SECONDS": "10",
    # The rows send hundreds of requests per user on purpose; the per-user limit has its own tests.
    "CUSTOM_RATE_LIMIT": "1000000/minute",
}


def by_status(counts: Mapping[Any, int]) -> str:
    """Return counts as `key: n, ...`, keys in order."""
    return ", ".join(f"{key}: {count}" for key, count in sorted(counts.items(), key=lambda kv: str(kv[0])))


def progress(check: str, message: str) -> None:
    """Print one progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {check:<8} {message}", flush=True)


@dataclass(frozen=True)
class Result:
    """One row of the final table."""

    check: str
    figures: str
    clean: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Canaries:
    """The secrets the service holds for the whole run; none may ever come back out of it."""

    admin_token: str
    webhook_secret: str

    def found_in(self, blob: bytes) -> list[str]:
        """Return the names of the canaries that occur in `blob`."""
        found = []
        if self.admin_token.encode() in blob:
            found.append("admin token")
        if self.webhook_secret.encode() in blob:
            found.append("webhook secret")
        return found


@dataclass
class Seen:
    """Every answer the suite received from the service, scanned for canaries as it arrives."""

    canaries: Canaries
    answers: int = 0
    leaks: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, where: str, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """Count one answer and remember where a canary appeared in it."""
        blob = "\n".join(f"{name}: {value}" for name, value in headers).encode("utf-8", "replace")
        blob += b"\n\n" + body
        found = self.canaries.found_in(blob)
        with self._lock:
            self.answers += 1
            for name in found:
                self.leaks.append(f"{name} in the {status} answer to {where}")

    def response(self, response: requests.Response) -> requests.Response:
        """Record a `requests` answer and return it."""
        self.add(
            f"{response.request.method} {response.request.path_url[:120]}",
            response.status_code,
            response.headers.items(),
            response.content,
        )
        return response


@dataclass
class RawAnswer:
    """An answer read from a raw socket: status, headers (as sent), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return the first header called `name` (any case), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class Run:
    """One run of the suite: seeded randomness, canaries, every server started, every log and inbox."""

    def __init__(self, seed: int, workdir: Path) -> None:
        self.seed = seed
        self.workdir = workdir
        self.canaries = Canaries(ADMIN_TOKEN, f"canary-secret-{secrets.token_hex(16)}")
        self.seen = Seen(self.canaries)
        self.processes: list[Process] = []
        self.logs: list[Path] = []
        self.databases: list[Path] = []
        self.har_files: list[Path] = []
        self.rehive: Process | None = None
        self.rehive_port = 0
        self.service: Process | None = None  # the service checks 2 to 6 share
        self.multi: Any = None  # the multi-mode stack of the access and leaks rows (reliability.multi)
        self._tokens: dict[str, str] = {}
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        """Return this thread's Session (requests does not promise one is safe to share)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # loopback only: no proxy from the environment
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    # -- servers ----------------------------------------------------------------------------------

    def start_rehive(self) -> Process:
        """Start the stand-in (again on the same port once it has one); nobody is a webhook there."""
        log = self.workdir / "local_rehive.log"
        with _no_orphans():
            self.rehive = start_local_rehive(port=self.rehive_port, log_path=log)
        self.rehive_port = int(self.rehive.url.rsplit(":", 1)[1])
        self.processes.append(self.rehive)
        self._tokens.clear()  # a new stand-in knows none of the old tokens
        return self.rehive

    def stop_rehive(self) -> None:
        """Stop the stand-in for real: its port then refuses connections."""
        if self.rehive is not None:
            self.rehive.stop()
            self.rehive = None

    def env(self, name: str, **settings: str) -> dict[str, str]:
        """Return the service environment of `make run`'s local mode, with the canaries and `settings`."""
        assert self.rehive is not None
        database = self.workdir / f"{name}.sqlite3"
        if database not in self.databases:  # a kept folder of an earlier run starts empty again
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                path.unlink(missing_ok=True)
            self.databases.append(database)
        values = {
            "REHIVE_API_URL": self.rehive.url + "/3/",
            "REHIVE_ADMIN_TOKEN": self.canaries.admin_token,
            "REHIVE_COMPANY": COMPANY,
            "REHIVE_WEBHOOK_SECRET": self.canaries.webhook_secret,
            "REHIVE_WEBHOOK_SECRET_PREVIOUS": "",
            "DATABASE_PATH": str(database),
            "SAVINGS_PERCENT": "10",
            **PINNED_SETTINGS,
            **settings,
        }
        return service_env(os.environ, **values)

    def start_service(self, name: str, env: Mapping[str, str], sock: socket.socket | None = None) -> Process:
        """Start gunicorn as `make run` does (2 gthread workers of 8 threads), logging to a file.

        It runs in its own empty folder, so a developer's `.env` is not read.
        """
        log = self.workdir / f"{name}.log"
        if log not in self.logs:
            log.unlink(missing_ok=True)
            self.logs.append(log)
        cwd = self.workdir / f"{name}-cwd"
        cwd.mkdir(exist_ok=True)
        with _no_orphans():
            process = start_service(env, sock or listening_socket(), log_path=log, cwd=cwd)
        self.processes.append(process)
        return process

    def shared_service(self) -> Process:
        """Return the service checks 2 to 6 share (started the first time; again if it died).

        Rehive's timeout is 1 s, so that "slower than our timeout" takes 1 s a request to show; it
        logs in JSON (LOG_FORMAT=json).
        """
        if self.service is None or not self.service.alive():
            # JSON log lines, so that the leak check reads them as operators' log shippers would.
            env = self.env("service", REHIVE_TIMEOUT="1", LOG_FORMAT="json")
            self.service = self.start_service("service", env)
        return self.service

    def close(self) -> None:
        """Stop every server this run started; SIGKILL what does not stop."""
        if self.multi is not None:
            with contextlib.suppress(Exception):
                self.multi.close()
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(timeout=5)
            with contextlib.suppress(Exception):
                if process.alive():
                    process.kill()
        for session in self._sessions:
            session.close()

    def kill_all(self) -> None:
        """SIGKILL every process group still alive (used when the run itself is interrupted)."""
        for process in self.processes:
            if process.alive():
                with contextlib.suppress(Exception):
                    process.kill()

    # -- the stand-in -----------------------------------------------------------------------------

    def control(self, path: str = "", **settings: Any) -> Any:
        """Call the stand-in's control API (GET, or POST with `settings`)."""
        assert self.rehive is not None
        url = f"{self.rehive.url}/_control/{path}"
        if settings:
            response = self.session.post(url, json=settings, timeout=TIMEOUT)
        else:
            response = self.session.get(url, timeout=TIMEOUT)
        response.raise_for_status()
        return response.json()

    def reset_faults(self) -> None:
        """Switch every fault of the stand-in off."""
        assert self.rehive is not None
        self.session.post(f"{self.rehive.url}/_control/reset", json={}, timeout=TIMEOUT).raise_for_status()

    def users(self) -> dict[str, dict]:
        """Return the stand-in's users by email (or by id for the service users)."""
        return {row["email"] or row["id"]: row for row in self.control("users")}

    def login(self, email: str) -> str:
        """Return a user token for a demo user, logging in once per stand-in."""
        if email not in self._tokens:
            assert self.rehive is not None
            company = email.rsplit("@", 1)[1].split(".")[0]
            response = self.session.post(
                f"{self.rehive.url}/3/auth/login/",
                json={"user": email, "company": company, "password": PASSWORDS[email]},
                timeout=TIMEOUT,
            )
            response.raise_for_status()
            self._tokens[email] = response.json()["data"]["token"]
        return self._tokens[email]

    def fresh_token(self, email: str, expires_in: float | None = None) -> str:
        """Return a new token for a user (never cached by the service yet)."""
        company = email.rsplit("@", 1)[1].split(".")[0]
        body: dict[str, Any] = {"company": company, "user": email}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self.control("tokens", **body)["token"]

    def rehive_admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the stand-in's admin API with its service token (never through our service)."""
        assert self.rehive is not None
        return self.session.request(
            method,
            f"{self.rehive.url}/3/{path}",
            headers={"Authorization": f"Token {ADMIN_TOKEN}"},
            timeout=TIMEOUT,
            **kwargs,
        )

    # -- our service --------------------------------------------------------------------------------

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """GET a path of the shared service, recording the answer."""
        service = self.shared_service()
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Token {token}"
        response = self.session.get(service.url + path, headers=headers, timeout=TIMEOUT, **kwargs)
        return self.seen.response(response)

    def raw(self, request: bytes, where: str, timeout: float = 10.0) -> RawAnswer:
        """Send `request` byte for byte to the shared service and read one answer."""
        port = int(self.shared_service().url.rsplit(":", 1)[1])
        return raw_request("127.0.0.1", port, request, where, self.seen, timeout)


def _children() -> set[int]:
    """Return the ids of this process's children (Linux: from /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == os.getpid():
                children.add(int(entry.name))
    return children


@contextlib.contextmanager
def _no_orphans() -> Iterator[None]:
    """SIGKILL the process group of a server that failed or was interrupted while starting.

    devtools' helpers return the Process only once the server answers; until then nobody else
    holds it, so a timeout or a Ctrl-C there would leave it running.
    """
    before = _children()
    try:
        yield
    except BaseException:
        for pid in _children() - before:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its own group: devtools starts a new session
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise


def raw_request(host: str, port: int, request: bytes, where: str, seen: Seen, timeout: float) -> RawAnswer:
    """Write `request` to a new connection and parse the answer with http.client."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the server sees the end of what we send
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode("latin-1"))
        response.begin()
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
        answer = RawAnswer(response.status, list(response.getheaders()), body)
    seen.add(where, answer.status, answer.headers, answer.body)
    return answer


def inbox_rows(database: Path) -> int:
    """Return how many events the inbox holds (0 before the file exists)."""
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        return conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0]
