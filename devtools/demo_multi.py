"""The multi-company walk of `make demo`: one extension, installed by two companies, kept apart.

A second service runs with EXTENSION_MODE=multi (no admin token, no webhook secret of its own) against
a stand-in in this process, so that the walk can see the tokens the stand-in hands the extension and
prove what becomes of them. Both companies activate it; their users see only their own company; each
company's webhooks carry that company's secret; a rotation replaces the token; a deactivation shuts
the company out; a purge leaves no row of it. Tokens and secrets are never printed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from devtools.processes import ROOT, Process, listening_socket, start_service, wait_for
from devtools.run_local import fernet_key, multi_env
from devtools.stand_in import StandIn
from devtools.walk import check, mask, money, say, step
from local_rehive import RunningServer, serve
from webhooks.inbox import Inbox

NOT_ACTIVATED = "This company has not activated the extension."
USERS = {"demo": ("alice@demo.test", "alice-pass-123"), "other": ("mallory@other.test", "mallory-pass-123")}


def json_rows(text: str) -> list[dict]:
    """Parse a CLI's `--json` output: one JSON array, or one object per line."""
    text = text.strip()
    if not text:
        return []
    with contextlib.suppress(ValueError):
        parsed = json.loads(text)
        return parsed if isinstance(parsed, list) else [parsed]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class MultiDemo:
    """The stand-in (in this process), the multi-mode service, and the calls the walk makes to them."""

    def __init__(self, rehive: RunningServer, service: Process, env: dict[str, str], workdir: Path) -> None:
        self.rehive = rehive
        self.stand_in = StandIn(rehive.url)
        self.service = service.url
        self.env = env
        self.workdir = workdir
        self.database = Path(env["DATABASE_PATH"])
        self.services: dict[str, int] = {}
        self.admins = {company: self.stand_in.company_admin(company) for company in USERS}
        self.users = {
            company: self.stand_in.login(email, password, company)
            for company, (email, password) in USERS.items()
        }

    # -- the platform's side --------------------------------------------------------------------

    def token_of(self, company: str) -> str:
        """Return the service token the stand-in gave the extension for `company` (never printed)."""
        store = self.rehive.platform.store
        with store.lock:
            token = store.services[self.services[company]].token
        check(bool(token), f"the stand-in holds no token of {company}'s service")
        return token or ""

    def rehive_accepts(self, token: str) -> bool:
        """Return whether the stand-in answers `GET /3/auth/` for `token`."""
        return self.stand_in.call(token, "GET", "auth/").status_code == 200

    def admin(self, company: str, method: str, path: str, **kwargs) -> dict:
        response = self.stand_in.call(self.admins[company], method, path, **kwargs)
        check(response.ok, f"{company}: stand-in {method} {path} answered {response.status_code}")
        return response.json()

    def webhooks_of(self, company: str) -> list[dict]:
        """Return `company`'s webhooks that point at the service, as its admin sees them in Rehive."""
        rows = self.admin(company, "GET", "admin/webhooks/", params={"page_size": "250"})["data"]["results"]
        return [row for row in rows if row["url"] == self.service + "/webhooks/"]

    def last_call(self, company: str, endpoint: str) -> dict:
        """Return the stand-in's latest call to the extension's `/<endpoint>/` for `company`."""
        calls = [
            call
            for call in self.stand_in.control("services/calls")
            if call["company"] == company and call["endpoint"] == endpoint
        ]
        check(bool(calls), f"the stand-in never called /{endpoint}/ for {company}")
        return calls[-1]

    def truth(self, company: str, email: str) -> set[str]:
        """Return the ids of a user's transactions, as the stand-in knows them."""
        return {tx["id"] for tx in self.stand_in.control(f"transactions?company={company}&user={email}")}

    # -- the service's side ---------------------------------------------------------------------

    def custom_transactions(self, company: str, **params: str) -> requests.Response:
        return self.stand_in.http.get(
            f"{self.service}/custom/transactions/",
            params=params,
            headers={"Authorization": f"Token {self.users[company]}"},
            timeout=15,
        )

    def deliver(self, envelope: dict, secret: str) -> requests.Response:
        """POST an envelope to the service's /webhooks/ as Rehive would, signed with `secret`."""
        return self.stand_in.http.post(
            f"{self.service}/webhooks/",
            data=json.dumps(envelope),
            headers={"Authorization": f"Secret {secret}", "Content-Type": "application/json"},
            timeout=15,
        )

    def inbox(self) -> list[dict]:
        store = Inbox(str(self.database))
        try:
            return store.list_events()[::-1]
        finally:
            store.close()

    def stored(self, event_id: str) -> bool:
        return any(row["id"] == event_id for row in self.inbox())

    def cli(self, *args: str) -> str:
        """Run `flask --app app ARGS` as an operator would, with the service's settings; return stdout."""
        env = {**self.env, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=self.workdir,  # not the checkout: a developer's .env must not change the settings
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        check(result.returncode == 0, f"flask {' '.join(args)} failed: {result.stderr[-500:]}")
        return result.stdout

    def rows_naming(self, company: str) -> list[str]:
        """Return the tables of the service's database that hold a cell equal to `company`."""
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)) as db:
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return [
                table
                for table in tables
                if any(company in row for row in db.execute(f'SELECT * FROM "{table}"'))  # noqa: S608
            ]

    def database_bytes(self) -> bytes:
        """Return the bytes of the database and its journal, as someone who copied the files has them."""
        paths = (self.database, Path(f"{self.database}-wal"))
        return b"".join(path.read_bytes() for path in paths if path.exists())


def start(workdir: Path, savings_percent: int) -> tuple[RunningServer, Process, dict[str, str]]:
    """Start a stand-in in this process and a multi-mode service (its PUBLIC_URL is its own address)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the stand-in's request lines stay quiet
    rehive = serve("127.0.0.1", 0, webhook_retry_delays=[0.2, 0.5, 1, 2, 4])
    try:
        sock = listening_socket()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = multi_env(rehive.url, public_url, workdir / "multi.sqlite3", savings_percent, fernet_key())
        cwd = workdir / "multi-cwd"
        cwd.mkdir(exist_ok=True)
        service = start_service(
            env, sock, log_path=workdir / "multi-service.log", workers=1, threads=4, cwd=cwd
        )
    except BaseException:
        rehive.shutdown()
        raise
    return rehive, service, env


def credit(demo: MultiDemo, company: str, email: str, amount: int) -> dict:
    """Credit a user Complete (by their company's admin) and wait until the service answered 202 for it."""
    tx = demo.admin(
        company,
        "POST",
        "admin/transactions/credit/",
        json={"user": email, "amount": amount, "currency": "USD", "status": "Complete"},
    )["data"]
    wait_for(
        lambda: [
            row
            for row in demo.stand_in.control("deliveries")
            if row["transaction"] == tx["id"]
            and row["event"] == "transaction.execute"
            and row["status"] == 202
        ],
        timeout=20,
        what=f"{company}'s webhook to be accepted",
    )
    return tx


def run(demo: MultiDemo, savings_percent: int) -> None:
    """Walk through the multi-company flow, checking each step."""
    step(
        "K.",
        "Multi-company mode: the same service with EXTENSION_MODE=multi holds no admin token and no webhook"
        " secret; each company's admin installs it.",
    )
    for company in USERS:
        demo.services[company] = demo.stand_in.install(company, demo.service, token=demo.admins[company])
        call = demo.last_call(company, "activate")
        say(
            f"{company}'s admin: POST /3/admin/services/, PATCH active; Rehive made a service user and"
            f" POSTed its token to /activate/: the service answered {call['status']}."
        )
        check(call["status"] == 201, f"/activate/ for {company} answered {call['status']}, expected 201")
    secrets: dict[str, str] = {}
    for company in USERS:
        hooks = demo.webhooks_of(company)
        check(bool(hooks), f"the service registered no webhook with {company}")
        check(all(hook["service"] for hook in hooks), f"{company}'s webhooks are not tied to the service")
        kept = {hook["secret"] for hook in hooks}
        check(len(kept) == 1 and "" not in kept, f"{company}'s webhooks do not share one secret")
        secrets[company] = kept.pop()
        events = ", ".join(sorted(hook["event"] for hook in hooks))
        say(f"{company}: the service subscribed itself to {events}, with a secret of {company}'s own.")
    check(secrets["demo"] != secrets["other"], "both companies' webhooks carry the same secret")
    stored = demo.database_bytes()
    for company in USERS:
        token = demo.token_of(company)
        check(token.encode() not in stored, f"{company}'s token is in the database file in plaintext")
        check(
            secrets[company].encode() not in stored,
            f"{company}'s secret is in the database file in plaintext",
        )
    say("Both tokens and both secrets are stored encrypted (Fernet): none is in the database file's bytes.")
    listed = {row["company"]: row for row in json_rows(demo.cli("companies", "list", "--json"))}
    check(set(listed) == set(USERS), f"flask companies list shows {sorted(listed)}")
    check(all(row["active"] for row in listed.values()), "a company is listed as inactive")
    say(f"flask --app app companies list: {', '.join(sorted(listed))}, both active.")

    step("L.", "alice (demo) and mallory (other) each call GET /custom/transactions/ with their own token.")
    users = {row["email"]: row["id"] for row in demo.stand_in.control("users")}
    for company, (email, _password) in USERS.items():
        own = demo.truth(company, email)
        for params in ({"page_size": "250"}, {"page_size": "250", "user": users["alice@demo.test"]}):
            response = demo.custom_transactions(company, **params)
            check(response.status_code == 200, f"{email} got {response.status_code}")
            seen = {tx["id"] for tx in response.json()["data"]["results"]}
            check(
                seen == own,
                f"{email} saw {len(seen - own)} transactions not theirs, missed {len(own - seen)}",
            )
        say(f"{email}: 200 with her {len(own)} transactions, none of the other company's (?user=alice too).")

    step(
        "M.",
        "Each company's webhooks arrive signed with its own secret; a wrong company's secret is refused.",
    )
    credits = {}
    for company, (email, _password), amount in (
        ("demo", USERS["demo"], 5_000),
        ("other", USERS["other"], 8_000),
    ):
        credits[company] = tx = credit(demo, company, email, amount)
        say(
            f"{company}'s admin credits {email} {money(tx['amount'], tx['currency'])}: Rehive POSTed"
            f" /webhooks/ with {company}'s secret; the service answered 202."
        )
    done = wait_for(
        lambda: (
            {
                row["company"]
                for row in demo.inbox()
                if row["event"] == "transaction.execute" and row["status"] == "done"
            }
            >= set(USERS)
        ),
        timeout=20,
        what="both companies' events to be processed",
    )
    check(done, "the events were not processed")
    for company, (email, _password) in USERS.items():
        account = wait_for(
            lambda company=company, email=email: demo.admin(
                company, "GET", "admin/accounts/", params={"user": email, "name": "savings"}
            )["data"]["results"],
            timeout=20,
            what=f"{email}'s savings account",
        )
        legs = wait_for(
            lambda company=company, account=account: demo.admin(
                company, "GET", "admin/transactions/", params={"account": account[0]["reference"]}
            )["data"]["results"],
            timeout=20,
            what=f"{email}'s savings transfer",
        )
        expected = credits[company]["amount"] * savings_percent // 100
        check(legs[0]["amount"] == expected, f"{email} saved {legs[0]['amount']}, expected {expected}")
        say(
            f"{company}'s handler ran with {company}'s token:"
            f" {money(expected, legs[0]['currency'])} to {email}'s savings."
        )
    before = len(demo.inbox())
    forged = {
        "id": str(uuid.uuid4()),
        "event": "transaction.execute",
        "company": "other",
        "data": credits["other"],
    }
    response = demo.deliver(forged, secrets["demo"])
    check(
        response.status_code == 401, f"other's envelope signed with demo's secret got {response.status_code}"
    )
    say(f"an envelope for other signed with demo's secret -> 401 {response.json()['message']}")
    stranger = {**forged, "id": str(uuid.uuid4()), "company": "nobody"}
    response = demo.deliver(stranger, secrets["demo"])
    check(response.status_code == 403, f"an envelope of an unknown company got {response.status_code}")
    say(f"an envelope for a company that never activated it -> 403 {response.json()['message']}")
    check(len(demo.inbox()) == before, "a refused delivery was stored")
    say("Neither was stored.")

    step("N.", "Rehive rotates demo's token: POST /_control/services/<id>/rotate -> the service's /rotate/.")
    old = demo.token_of("demo")
    answer = demo.stand_in.act(f"services/{demo.services['demo']}/rotate")
    check(answer["ok"], f"/rotate/ failed: {answer['message']}")
    new = demo.token_of("demo")
    check(new != old, "the stand-in kept the old token")
    say(f"the service answered {answer['status']}; token {mask(old)} is replaced by {mask(new)}.")
    check(not demo.rehive_accepts(old), "the old token still works at Rehive")
    say("the old token now answers 401 at Rehive (GET /3/auth/).")
    response = demo.custom_transactions("demo", page_size="1")
    check(response.status_code == 200, f"alice got {response.status_code} after the rotation")
    check(new.encode() not in demo.database_bytes(), "the new token is in the database file in plaintext")
    say("alice's call still answers 200: the service calls Rehive with the new token (stored encrypted).")

    step(
        "O.", 'other\'s admin deactivates the extension (PATCH {"active": false}): Rehive POSTs /deactivate/.'
    )
    demo.stand_in.activate("other", demo.services["other"], False, token=demo.admins["other"])
    call = demo.last_call("other", "deactivate")
    check(call["status"] == 200, f"/deactivate/ answered {call['status']}")
    say(f"the service answered {call['status']}.")
    response = demo.custom_transactions("other")
    check(response.status_code == 403, f"mallory got {response.status_code}, expected 403")
    check(response.json()["message"] == NOT_ACTIVATED, f"mallory was told {response.json()['message']!r}")
    say(f"mallory -> 403 {response.json()['message']}")
    late = {**forged, "id": str(uuid.uuid4())}
    response = demo.deliver(late, secrets["other"])
    check(response.status_code == 403, f"a delivery for inactive other got {response.status_code}")
    check(not demo.stored(late["id"]), "a delivery for an inactive company was stored")
    say(f"a delivery for other, even with other's own secret -> 403 {response.json()['message']}")
    say("(not stored)")
    response = demo.custom_transactions("demo", page_size="1")
    check(response.status_code == 200, f"alice got {response.status_code}")
    say("alice (demo) -> 200: demo is not affected.")

    step("P.", "other activates it again, then Rehive purges company other (/deactivate/ with purge: true).")
    demo.stand_in.activate("other", demo.services["other"], True, token=demo.admins["other"])
    call = demo.last_call("other", "activate")
    check(call["status"] == 200, f"re-activation answered {call['status']}, expected 200")
    kept = {hook["secret"] for hook in demo.webhooks_of("other")}
    check(kept == {secrets["other"]}, "re-activation changed other's webhook secret")
    say(f"re-activation -> {call['status']}: a new token; other's webhook secret is kept.")
    check(any(row["company"] == "other" for row in demo.inbox()), "the inbox holds no event of other")
    answer = demo.stand_in.act(f"services/{demo.services['other']}/purge")
    check(answer["ok"], f"the purge failed: {answer['message']}")
    say(f"purge -> the service answered {answer['status']}.")
    listed = {row["company"] for row in json_rows(demo.cli("companies", "list", "--json"))}
    check(listed == {"demo"}, f"flask companies list shows {sorted(listed)} after the purge")
    events = json_rows(demo.cli("webhooks", "list", "--json", "--limit", "0"))
    check(all(row["company"] != "other" for row in events), "the inbox still holds events of other")
    check(any(row["company"] == "demo" for row in events), "the purge took demo's events too")
    say(
        f"flask companies list: {', '.join(sorted(listed))};"
        f" flask webhooks list: {len(events)} events, none of other."
    )
    tables = demo.rows_naming("other")
    check(not tables, f"rows naming other are left in {', '.join(tables)}")
    say("No row of any table in the database names other.")
    response = demo.custom_transactions("other")
    check(response.status_code == 403, f"mallory got {response.status_code} after the purge")
    say(f"mallory -> 403 {response.json()['message']}")


def main(workdir: Path, savings_percent: int) -> None:
    """Start the multi-mode pair, walk, and stop both (errors propagate to the demo's main)."""
    rehive, service, env = start(workdir, savings_percent)
    try:
        print(f"\nstand-in {rehive.url}   multi-mode service {service.url}", flush=True)
        demo = MultiDemo(rehive, service, env, workdir)
        try:
            run(demo, savings_percent)
        finally:
            demo.stand_in.close()
    finally:
        service.stop()
        rehive.shutdown()
