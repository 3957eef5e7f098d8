"""Multi-company mode for the access and leaks rows: one extension that both seeded companies installed.

The stand-in runs in this process, so that the suite knows every service token it hands the extension
(at activation and at rotation) and the webhook secret the extension registered for each company:
those are the canaries of multi mode, and the access row uses the secrets to sign deliveries for the
wrong company.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from devtools.demo_multi import json_rows
from devtools.processes import ROOT, Process, listening_socket, wait_for
from devtools.run_local import fernet_key, multi_env
from devtools.stand_in import StandIn
from local_rehive import RunningServer, serve
from reliability.stack import PINNED_SETTINGS, TIMEOUT, Run
from webhooks.inbox import Inbox

COMPANIES = ("demo", "other")
USERS = {"demo": ("alice@demo.test", "alice-pass-123"), "other": ("mallory@other.test", "mallory-pass-123")}

__all__ = ["COMPANIES", "USERS", "MultiStack", "stack_of"]


class MultiStack:
    """A multi-mode service, both companies activated through an in-process stand-in, and its canaries."""

    def __init__(self, run: Run) -> None:
        self.run = run
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request lines from the stand-in
        self.rehive: RunningServer = serve("127.0.0.1", 0, webhook_retry_delays=[0.1, 0.2, 0.5, 1])
        self.stand_in = StandIn(self.rehive.url)
        self.answers: list[tuple[str, bytes]] = []
        self.tokens: dict[str, str] = {}  # every service token the stand-in issued, by where it came from
        self.database = run.workdir / "multi.sqlite3"
        for path in (self.database, Path(f"{self.database}-wal"), Path(f"{self.database}-shm")):
            path.unlink(missing_ok=True)
        run.databases.append(self.database)
        sock = listening_socket()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.env = {
            **multi_env(self.rehive.url, public_url, self.database, 10, fernet_key()),
            **PINNED_SETTINGS,
            "LOG_FORMAT": "json",
        }
        self.service: Process = run.start_service("multi", self.env, sock)
        self.url = self.service.url
        self.admins = {company: self.stand_in.company_admin(company) for company in COMPANIES}
        self.services = {
            company: self.stand_in.install(company, self.url, token=self.admins[company])
            for company in COMPANIES
        }
        for company in COMPANIES:
            self.tokens[f"{company}'s token at activation"] = self.token_of(company)
        self.secrets = {company: self._secret_of(company) for company in COMPANIES}

    # -- the platform's side --------------------------------------------------------------------

    def token_of(self, company: str) -> str:
        """Return the token the stand-in holds for `company`'s service user."""
        store = self.rehive.platform.store
        with store.lock:
            token = store.services[self.services[company]].token
        if not token:
            raise RuntimeError(f"the stand-in holds no token of {company}'s service")
        return token

    def _secret_of(self, company: str) -> str:
        """Return the one secret the extension registered with `company`'s webhooks."""
        store = self.rehive.platform.store
        with store.lock:
            secrets = {
                hook.secret for hook in store.webhooks_of(company) if hook.url == self.url + "/webhooks/"
            }
        if len(secrets) != 1 or not next(iter(secrets)):
            raise RuntimeError(f"{company}'s webhooks do not carry one secret: {len(secrets)} found")
        return secrets.pop()

    def rotate(self, company: str) -> None:
        """Have the stand-in rotate `company`'s token through the extension's /rotate/."""
        answer = self.stand_in.act(f"services/{self.services[company]}/rotate")
        if not answer["ok"]:
            raise RuntimeError(f"/rotate/ for {company} failed: {answer['message']}")
        self.tokens[f"{company}'s token after rotation"] = self.token_of(company)

    def canaries(self) -> dict[str, str]:
        """Return every secret of multi mode by name: the service tokens and the webhook secrets."""
        return {**self.tokens, **{f"{company}'s webhook secret": s for company, s in self.secrets.items()}}

    def login(self, email: str) -> str:
        company = email.rsplit("@", 1)[1].split(".")[0]
        password = dict(USERS.values()).get(email) or "admin-pass-123"
        return self.stand_in.login(email, password, company)

    def credit(self, company: str, email: str, amount: int) -> dict:
        """Credit a user Complete and wait until the extension accepted the webhook (202)."""
        response = self.stand_in.call(
            self.admins[company],
            "POST",
            "admin/transactions/credit/",
            json={"user": email, "amount": amount, "currency": "USD", "status": "Complete"},
        )
        response.raise_for_status()
        tx = response.json()["data"]
        wait_for(
            lambda: [
                row
                for row in self.stand_in.control("deliveries")
                if row["transaction"] == tx["id"]
                and row["event"] == "transaction.execute"  # a Complete credit's last event
                and row["status"] == 202
            ],
            timeout=20,
            what=f"{company}'s delivery to be accepted",
        )
        return tx

    # -- the service's side ---------------------------------------------------------------------

    def record(self, response: requests.Response) -> requests.Response:
        """Keep an answer of the multi-mode service for the leak scan (and scan it for the run's canaries)."""
        self.run.seen.response(response)
        where = f"{response.request.method} {response.request.path_url[:100]} (multi mode)"
        blob = "\n".join(f"{name}: {value}" for name, value in response.headers.items()).encode()
        self.answers.append(
            (f"the {response.status_code} answer to {where}", blob + b"\n\n" + response.content)
        )
        return response

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """Call the multi-mode service (as a user when `token` is given), recording the answer."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Token {token}"
        return self.record(
            self.run.session.request(method, self.url + path, headers=headers, timeout=TIMEOUT, **kwargs)
        )

    def deliver(self, company: str, secret: str, data: dict | None = None) -> tuple[str, requests.Response]:
        """POST a transaction.execute envelope of `company` signed with `secret`; return id and answer."""
        event_id = str(uuid.uuid4())
        envelope = {"id": event_id, "event": "transaction.execute", "company": company, "data": data or {}}
        response = self.request(
            "POST",
            "/webhooks/",
            data=json.dumps(envelope),
            headers={"Authorization": f"Secret {secret}", "Content-Type": "application/json"},
        )
        return event_id, response

    def events(self) -> list[dict]:
        """Return the inbox's rows (no bodies)."""
        inbox = Inbox(str(self.database))
        try:
            return inbox.list_events()
        finally:
            inbox.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run `flask --app app ARGS` with the service's settings, in its folder (no .env there)."""
        return subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=self.run.workdir / "multi-cwd",
            env={**self.env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            timeout=60,
        )

    def companies(self) -> list[dict]:
        """Return `flask companies list --json`."""
        result = self.cli("companies", "list", "--json")
        if result.returncode:
            raise RuntimeError(f"flask companies list failed: {result.stderr.decode()[-300:]}")
        return json_rows(result.stdout.decode())

    def close(self) -> None:
        """Stop the stand-in (the service is one of the run's processes, stopped with them)."""
        self.stand_in.close()
        self.rehive.shutdown()


def stack_of(run: Run) -> MultiStack:
    """Return the run's multi-mode stack, starting it the first time."""
    if run.multi is None:
        run.multi = MultiStack(run)
    return run.multi


def found_in(canaries: dict[str, str], blob: bytes) -> list[str]:
    """Return the names of the canaries that occur in `blob`."""
    return [name for name, value in canaries.items() if value.encode() in blob]


def scan_blobs(canaries: dict[str, str], blobs: Iterable[tuple[str, bytes]]) -> list[str]:
    """Return `name in where` for every canary found in the (where, bytes) pairs."""
    return [f"{name} in {where}" for where, blob in blobs for name in found_in(canaries, blob)]
