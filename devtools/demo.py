"""`make demo`: run the whole flow against a local stand-in for Rehive and explain each step.

It starts its own stand-in and service on free ports (so two demos never collide), then walks through
A (the app logs in at Rehive), B (it calls our endpoint), C (we ask Rehive who that is), D (we call the
admin API with our own token), a credit that fires a webhook, the stored event and the handler's
effect, and who may not see what. Then (K to P) it walks the multi-company mode: a second service with
EXTENSION_MODE=multi that two companies install, kept apart (devtools/demo_multi.py). Tokens are masked
and secrets never shown. It exits non-zero when any step misbehaves.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path

import requests

from devtools import demo_multi
from devtools.processes import start_local_rehive, start_service, wait_for
from devtools.run_local import local_env, register_webhooks
from devtools.stand_in import LOCAL_ADMIN_TOKEN, InstallFailed, StandIn
from devtools.walk import GREEN, PLAIN, RED, DemoFailed, check, mask, money, say, step
from webhooks.inbox import Inbox

SAVINGS_PERCENT = 10


class Demo:
    """The running stand-in and service, and the calls the demo makes to them."""

    def __init__(self, rehive_url: str, service_url: str, database: Path) -> None:
        self.stand_in = StandIn(rehive_url)
        self.service = service_url
        self.database = database

    def login(self, email: str, password: str, company: str = "demo") -> str:
        return self.stand_in.login(email, password, company)

    def custom_transactions(self, token: str, **params: str) -> requests.Response:
        return self.stand_in.http.get(
            f"{self.service}/custom/transactions/",
            params=params,
            headers={"Authorization": f"Token {token}"},
            timeout=15,
        )

    def admin(self, method: str, path: str, **kwargs) -> dict:
        response = self.stand_in.admin(method, path, **kwargs)
        check(response.ok, f"stand-in {method} {path} answered {response.status_code}")
        return response.json()

    def control(self, path: str) -> list | dict:
        return self.stand_in.control(path)

    def inbox(self) -> list[dict]:
        store = Inbox(str(self.database))
        try:
            return store.list_events()[::-1]
        finally:
            store.close()


def run(demo: Demo) -> None:
    """Walk through the flow, checking each step."""
    step("A.", "The app logs in at Rehive (POST /3/auth/login/) and keeps the user's token.")
    alice = demo.login("alice@demo.test", "alice-pass-123")
    say(f"alice@demo.test is logged in; her token is {mask(alice)} (64 characters; masked here).")

    step("B.", "The app calls our endpoint with that token: GET /custom/transactions/")
    say("Authorization: Token " + mask(alice))
    response = demo.custom_transactions(alice, page_size="5")
    check(response.status_code == 200, f"/custom/transactions/ answered {response.status_code}")
    body = response.json()["data"]
    say(f"-> 200, {body['count']} transactions, first page:")
    for tx in body["results"]:
        amount = money(tx["amount"], tx["currency"])
        say(f"   {tx['tx_type']:<6} {amount:>14}  {tx['status']:<8} {tx['id'][:8]}")
    check(body["count"] > 0, "alice has no transactions in the stand-in")
    hers = {tx["id"] for tx in demo.control("transactions?company=demo&user=alice@demo.test")}
    check(all(tx["id"] in hers for tx in body["results"]), "the list holds someone else's transaction")
    check(
        not any("user" in tx or "email" in str(tx.get("partner")) for tx in body["results"]),
        "the list shows more than Rehive's user API would (user, or the partner's email)",
    )
    if body["next"]:
        say(f"next page (a link to this service, never to Rehive): {body['next']}")
        check(body["next"].startswith(demo.service), "the next link does not point at this service")

    step("C.", "Our service asked Rehive who that token belongs to: GET /3/auth/ with her token.")
    calls = [call for call in demo.control("auth-calls") if call.get("user") == "alice@demo.test"]
    check(bool(calls), "the stand-in saw no /3/auth/ call for alice")
    call = calls[-1]
    say(f"Rehive answered {call['status']}: {call['user']} of company '{call['company']}'.")
    say(f"(the service sent X-Forwarded-For: {call['forwarded_for']}, the app's own address)")
    say("The answer is cached for AUTH_CACHE_SECONDS (10 s by default), keyed by a hash of the token.")

    step(
        "D.", "Then it called Rehive's admin API with its own token: GET /3/admin/transactions/?user=<alice>"
    )
    say(f"with Authorization: Token {mask(LOCAL_ADMIN_TOKEN)} (the service's token never leaves the server)")
    say("user=<alice's id> is forced by the service: alice cannot widen her view.")

    step("E.", "A credit reaches Complete in Rehive, which fires the transaction.execute webhook.")
    credit = demo.admin(
        "POST",
        "admin/transactions/credit/",
        json={"user": "alice@demo.test", "amount": 12_345, "currency": "USD", "status": "Complete"},
    )["data"]
    say(f"an admin credits alice 123.45 USD: transaction {credit['id'][:8]}, status {credit['status']}")
    delivered = wait_for(
        lambda: [
            d
            for d in demo.control("deliveries")
            if d.get("event") == "transaction.execute"
            and d.get("transaction") == credit["id"]
            and d.get("status") == 202
        ],
        timeout=20,
        what="the webhook to be delivered",
    )
    say(f"Rehive POSTed /webhooks/ (Authorization: Secret …); the service answered {delivered[0]['status']}.")

    step(
        "F.",
        "The service stored the event (fsync'd) before answering, then processed it outside the request.",
    )
    done = wait_for(
        lambda: [
            row for row in demo.inbox() if row["event"] == "transaction.execute" and row["status"] == "done"
        ],
        timeout=20,
        what="the event to be processed",
    )
    for row in demo.inbox():
        say(f"inbox: event {row['id'][:8]} {row['event']:<20} {row['status']:<10} attempts {row['attempts']}")
    check(bool(done), "no event was processed")

    step(
        "G.", f"The auto-savings handler moved {SAVINGS_PERCENT}% of the credit to alice's 'savings' account."
    )
    savings = wait_for(
        lambda: demo.admin(
            "GET", "admin/accounts/", params={"user": credit["user"]["id"], "name": "savings"}
        )["data"]["results"],
        timeout=20,
        what="the savings account",
    )
    reference = savings[0]["reference"]
    legs = wait_for(
        lambda: demo.admin("GET", "admin/transactions/", params={"account": reference})["data"]["results"],
        timeout=20,
        what="the savings transfer",
    )
    check(len(legs) == 1, f"expected one transfer into savings, found {len(legs)}")
    check(legs[0]["amount"] == 1_234, f"expected 12.34 USD saved, found {legs[0]['amount']}")
    saved = money(legs[0]["amount"], legs[0]["currency"])
    say(f"savings account {reference}: {saved} (the floor of 10% of 123.45)")
    say(
        "The transfer carried an Idempotency-Key derived from the event, so a re-run cannot move money twice."
    )

    step("H.", "bob asks for alice's transactions with ?user=<alice's id>.")
    bob = demo.login("bob@demo.test", "bob-pass-123")
    response = demo.custom_transactions(bob, user=credit["user"]["id"])
    check(response.status_code == 200, f"bob's call answered {response.status_code}")
    his = {tx["id"] for tx in demo.control("transactions?company=demo&user=bob@demo.test")}
    strangers = {tx["id"] for tx in response.json()["data"]["results"]} - his
    check(not strangers, f"bob saw {len(strangers)} transactions that are not his")
    count = response.json()["data"]["count"]
    say(f"-> 200 with {count} transactions, all bob's own: the service replaced his user= filter.")

    step("I.", "mallory, a user of another company, calls the endpoint with her valid token.")
    mallory = demo.login("mallory@other.test", "mallory-pass-123", company="other")
    response = demo.custom_transactions(mallory)
    check(response.status_code == 403, f"mallory got {response.status_code}, expected 403")
    say(f"-> 403 {response.json()['message']}")

    step("J.", "A call with no token, or a made-up one.")
    for header in ({}, {"Authorization": "Token made-up"}):
        response = requests.get(f"{demo.service}/custom/transactions/", headers=header, timeout=10)
        check(response.status_code == 401, f"got {response.status_code}, expected 401")
        challenge = response.headers.get("WWW-Authenticate")
        say(f"-> 401 {response.json()['message']}  (WWW-Authenticate: {challenge})")


def main() -> int:
    """Start everything on free ports, run the demo, stop everything."""
    work = Path(tempfile.mkdtemp(prefix="rehive-demo-"))
    print("Starting a local Rehive stand-in and the service on free ports...", flush=True)
    rehive = start_local_rehive(log_path=work / "local_rehive.log")
    service = None
    try:
        secret = secrets.token_urlsafe(32)
        database = work / "inbox.sqlite3"
        env = local_env(rehive.url, secret, database, SAVINGS_PERCENT)
        service = start_service(env, log_path=work / "service.log", workers=1, threads=4)
        register_webhooks(rehive.url, service.url, secret)
        print(f"stand-in {rehive.url}   service {service.url}   logs in {work}", flush=True)
        run(Demo(rehive.url, service.url, database))
        service.stop()
        rehive.stop()
        demo_multi.main(work, SAVINGS_PERCENT)
    except (DemoFailed, InstallFailed, RuntimeError, TimeoutError, requests.RequestException) as exc:
        print(f"\n{RED}DEMO FAILED:{PLAIN} {exc}\nLogs: {work}", file=sys.stderr)
        return 1
    finally:
        if service:
            service.stop()
        rehive.stop()
    print(f"\n{GREEN}The whole flow worked.{PLAIN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
