"""Check 6, access: a user sees only their own transactions, whatever they send; other companies are out.

The manage API too: users (not admins) and other companies are refused every call, and an admin
never reads, replays or changes a row of another company (one is planted in the inbox for this).

Alice tries every way to reach bob's (and the admin's, and another company's) transactions: user=,
user__in, case and bracket variants, repeated parameters, bob's transaction ids, account and
collection, pages beyond the end, orderings. Each answer is a 4xx refusal or a 200 holding only her
own transactions, and every pagination link points at this service, never at Rehive; the next links
are followed to the end. Users of another company are refused whatever they send.

Multi mode (reliability/multi.py: both companies activated an EXTENSION_MODE=multi service): alice and
mallory aim at each other's transactions, each company's admin at the other's events and settings in
the manage API, and deliveries are signed with the other company's secret; each is refused or answered
with the caller's own company only, and nothing refused is stored.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from urllib.parse import quote

import requests

from devtools.processes import wait_for
from reliability import multi
from reliability.hostile import build
from reliability.stack import COMPANY, Result, Run, by_status, progress
from transactions import USER_FIELDS as USER_FIELD_NAMES
from webhooks.inbox import Inbox

USER_FIELDS = frozenset(USER_FIELD_NAMES)

NAME = "access"
MAX_PAGES = 40  # a bound on following next links


class Judge:
    """Check each answer for one caller; collect figures and problems."""

    def __init__(self, run: Run, caller_id: str, own_ids: set[str]) -> None:
        self.run = run
        self.caller_id = caller_id
        self.own_ids = own_ids
        self.rehive_host = f"127.0.0.1:{run.rehive_port}"
        self.service_url = run.shared_service().url
        self.statuses: Counter[int] = Counter()
        self.links = 0
        self.problems: list[str] = []

    def answer(self, what: str, status: int, body: object, token: str) -> None:
        """Judge one answer (and the pages its next links lead to)."""
        self.statuses[status] += 1
        if status != 200:
            if not 400 <= status < 500:  # a refusal is fine; anything else is not
                self.problems.append(f"{what}: {status}")
            return
        pages = 0
        while True:
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                self.problems.append(f"{what}: 200 without a list")
                return
            # A user's results carry no `user` (Rehive's user-section shape), so ownership is judged
            # against the stand-in's own list of the caller's transactions.
            others = [tx.get("id") for tx in data["results"] if tx.get("id") not in self.own_ids]
            if others:
                self.problems.append(f"{what}: {len(others)} transactions not the caller's, e.g. {others[0]}")
            exposed = [tx.get("id") for tx in data["results"] if set(tx) - USER_FIELDS]
            if exposed:
                self.problems.append(f"{what}: admin-only fields shown, e.g. in {exposed[0]}")
            for name in ("next", "previous"):
                link = data.get(name)
                if link is None:
                    continue
                self.links += 1
                if self.rehive_host in link or not link.startswith(
                    self.service_url + "/custom/transactions/"
                ):
                    self.problems.append(f"{what}: {name} link {link[:100]!r} does not point at this service")
            pages += 1
            following = data.get("next")
            if not following or pages >= MAX_PAGES or not following.startswith(self.service_url):
                return
            response = self.run.seen.response(
                self.run.session.get(following, headers={"Authorization": f"Token {token}"}, timeout=15)
            )
            self.statuses[response.status_code] += 1
            if response.status_code != 200:
                self.problems.append(f"{what}: following {following[:80]!r} gave {response.status_code}")
                return
            body = response.json()


MANAGE_CALLS = (
    ("GET", "/manage/api/status/", None),
    ("GET", "/manage/api/events/", None),
    ("GET", "/manage/api/events/?page_size=100&status=dead", None),
    ("GET", "/manage/api/events/{planted}/", None),
    ("POST", "/manage/api/events/{planted}/replay/", None),
    ("POST", "/manage/api/events/replay-dead/", None),
    ("GET", "/manage/api/settings/", None),
    ("PATCH", "/manage/api/settings/", {"savings_percent": 55}),
)
STRANGER = "other"


def _plant(run: Run) -> str:
    """Store a dead event of another company in the shared service's inbox; return its id."""
    planted = f"planted-{run.seed}"
    inbox = Inbox(str(run.workdir / "service.sqlite3"))
    try:
        conn, now = inbox.connection(), time.time()
        body = json.dumps({"id": planted, "event": "user.create", "company": STRANGER, "data": {}})
        conn.execute(
            "INSERT INTO webhook_events (company, id, event, body, status, attempts, received_at, updated_at)"
            " VALUES (?, ?, 'user.create', ?, 'dead', 8, ?, ?) ON CONFLICT (company, id) DO NOTHING",
            (STRANGER, planted, body, now, now),
        )
        return planted
    finally:
        inbox.close()


def _planted_row(run: Run, planted: str) -> dict | None:
    inbox = Inbox(str(run.workdir / "service.sqlite3"))
    try:
        rows = inbox.get(planted, STRANGER)
        return rows[0] if rows else None
    finally:
        inbox.close()


def _manage(run: Run, tokens: dict[str, str]) -> tuple[str, list[str]]:
    """Every manage call as users and outsiders (refused) and as the admin (never another company's row)."""
    service = run.shared_service()
    planted = _plant(run)
    problems: list[str] = []
    refused: Counter[int] = Counter()
    before = run.session.get(
        f"{service.url}/manage/api/settings/",
        headers={"Authorization": f"Token {tokens['admin@demo.test']}"},
        timeout=15,
    ).json()["data"]
    for who in ("alice@demo.test", "bob@demo.test", "mallory@other.test", "other company's service"):
        token = tokens.get(who, "local-other-admin-token")
        for method, path, body in MANAGE_CALLS:
            url = service.url + path.format(planted=planted)
            response = run.seen.response(
                run.session.request(
                    method, url, headers={"Authorization": f"Token {token}"}, json=body, timeout=15
                )
            )
            refused[response.status_code] += 1
            if response.status_code != 403:
                problems.append(f"manage {who} {method} {path}: {response.status_code}")
    admin = {"Authorization": f"Token {tokens['admin@demo.test']}"}
    seen_planted = 0
    for method, path, _body in MANAGE_CALLS:
        if method == "PATCH":
            continue  # the admin may change settings; checked below to stay theirs
        url = service.url + path.format(planted=planted)
        response = run.seen.response(run.session.request(method, url, headers=admin, timeout=15))
        text = response.text
        if planted in text and "{planted}" not in path:
            seen_planted += 1
            problems.append(f"manage admin {method} {path}: shows another company's event")
        if "{planted}" in path and response.status_code != 404:
            problems.append(f"manage admin {method} {path}: {response.status_code}, not 404")
    row = _planted_row(run, planted)
    if row is None or row["status"] != "dead" or row["attempts"] != 8:
        problems.append("manage: another company's dead event was changed by our admin")
    after = run.session.get(f"{service.url}/manage/api/settings/", headers=admin, timeout=15).json()["data"]
    if after != before:
        problems.append(f"manage: settings changed by refused callers: {before} -> {after}")
    changed = int(row is None or row["status"] != "dead")
    figures = (
        f"manage API: users and other companies refused {refused[403]}/{sum(refused.values())};"
        f" another company's event shown to {COMPANY}'s admin: {seen_planted}, changed: {changed}"
    )
    return figures, problems


def _multi(run: Run) -> tuple[str, list[str]]:
    """Multi mode: each company's users and admin reach only their own company; secrets do not cross."""
    stack = multi.stack_of(run)
    problems: list[str] = []
    ids = {row["email"]: row["id"] for row in stack.stand_in.control("users") if row["email"]}
    txs = {
        email: stack.stand_in.control(f"transactions?company={company}&user={email}")
        for company, (email, _password) in multi.USERS.items()
    }
    tokens = {email: stack.login(email) for email in (*txs, "admin@demo.test", "admin@other.test")}
    reads: Counter[int] = Counter()
    crossed = 0
    alice, mallory = multi.USERS["demo"][0], multi.USERS["other"][0]
    for caller, victim in ((alice, mallory), (mallory, alice)):
        own, theirs = {tx["id"] for tx in txs[caller]}, txs[victim][0]
        for params in (
            {"page_size": "250"},
            {"user": ids[victim]},
            {"user": victim},
            {"id": theirs["id"]},
            {"id__in": f"{txs[caller][0]['id']},{theirs['id']}"},
            {"account": theirs["account"]},
            {"collection": theirs["collection"]},
        ):
            response = stack.request("GET", "/custom/transactions/", tokens[caller], params=params)
            reads[response.status_code] += 1
            if response.status_code == 200:
                seen = {tx["id"] for tx in response.json()["data"]["results"]}
                crossed += len(seen - own)
                if seen - own:
                    problems.append(f"multi: {caller} {params} saw {len(seen - own)} transactions not theirs")
                if params == {"page_size": "250"} and seen != own:
                    problems.append(f"multi: {caller} sees {len(seen)} of their {len(own)} transactions")
            elif not 400 <= response.status_code < 500:
                problems.append(f"multi: {caller} {params}: {response.status_code}")

    # The manage API, once each company's inbox holds an event delivered by the stand-in.
    for company, (email, _password) in multi.USERS.items():
        stack.credit(company, email, 1_000)
    # Every event settled first, so that a status that changes below was changed by a refused call.
    wait_for(
        lambda: (
            {row["company"] for row in stack.events() if row["status"] == "done"} >= set(multi.COMPANIES)
            and not [row for row in stack.events() if row["status"] in ("received", "processing")]
        ),
        timeout=20,
        what="an event of each company to be processed",
    )
    events = stack.events()
    rows = {
        company: {row["id"]: row["status"] for row in events if row["company"] == company}
        for company in multi.COMPANIES
    }
    shown = changed = 0
    for admin, company, stranger in (
        ("admin@demo.test", "demo", "other"),
        ("admin@other.test", "other", "demo"),
    ):
        listing = stack.request("GET", "/manage/api/events/?page_size=100", tokens[admin])
        listed = (
            {row["id"] for row in listing.json()["data"]["results"]} if listing.status_code == 200 else set()
        )
        if listing.status_code != 200 or not listed & set(rows[company]):
            problems.append(f"multi: {company}'s admin does not see its own events ({listing.status_code})")
        shown += len(listed & set(rows[stranger]))
        foreign = next(iter(rows[stranger]))
        for method, path in (
            ("GET", f"/manage/api/events/{foreign}/"),
            ("POST", f"/manage/api/events/{foreign}/replay/"),
        ):
            response = stack.request(method, path, tokens[admin])
            if response.status_code != 404:
                problems.append(
                    f"multi: {company}'s admin {method} {stranger}'s event: {response.status_code}"
                )
    after = {row["id"]: row["status"] for row in stack.events()}
    changed = sum(
        after.get(event_id) != status for company in rows for event_id, status in rows[company].items()
    )
    for email in (alice, mallory):
        response = stack.request("GET", "/manage/api/events/", tokens[email])
        if response.status_code != 403:
            problems.append(f"multi: {email} reads the manage API: {response.status_code}")
    settings_crossed = 0
    for admin, percent, stranger_admin in (
        ("admin@demo.test", 37, "admin@other.test"),
        ("admin@other.test", 41, "admin@demo.test"),
    ):
        before = stack.request("GET", "/manage/api/settings/", tokens[stranger_admin]).json()["data"]
        changed_own = stack.request(
            "PATCH", "/manage/api/settings/", tokens[admin], json={"savings_percent": percent}
        )
        now = stack.request("GET", "/manage/api/settings/", tokens[stranger_admin]).json()["data"]
        if changed_own.status_code != 200 or now != before:
            settings_crossed += 1
            problems.append(
                f"multi: {admin}'s settings change: {changed_own.status_code}; the other's {before} -> {now}"
            )
    if shown or changed:
        problems.append(f"multi: another company's events shown {shown}, changed {changed}")

    # Deliveries signed with the other company's secret, or for a company that never activated.
    stored = len(stack.events())
    crossed_secrets: Counter[int] = Counter()
    for company, signer in (("other", "demo"), ("demo", "other")):
        _event, response = stack.deliver(
            company, stack.secrets[signer], txs[alice if company == "demo" else mallory][0]
        )
        crossed_secrets[response.status_code] += 1
        if response.status_code != 401:
            problems.append(
                f"multi: {company}'s envelope signed with {signer}'s secret: {response.status_code}"
            )
    _event, response = stack.deliver("nobody", stack.secrets["demo"])
    unknown_refused = int(response.status_code == 403)
    if not unknown_refused:
        problems.append(f"multi: an envelope of a company that never activated: {response.status_code}")
    kept = len(stack.events()) - stored
    if kept:
        problems.append(f"multi: {kept} refused deliveries were stored")
    figures = (
        f"multi mode (both companies activated): {sum(reads.values())} reads by alice and mallory aimed at"
        f" each other ({by_status(reads)}), another company's transaction seen: {crossed};"
        f" manage API: another company's event shown {shown}, changed {changed}, settings crossed"
        f" {settings_crossed}; deliveries signed with the other company's secret refused"
        f" {crossed_secrets[401]}/2, of an unknown company {unknown_refused}/1, stored {kept}"
    )
    return figures, problems


def _json(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def run(run: Run) -> Result:
    """Try every trick as alice (and a few as bob), then as users of another company."""
    users = run.users()
    alice_id, bob_id = users["alice@demo.test"]["id"], users["bob@demo.test"]["id"]
    admin_id, mallory_id = users["admin@demo.test"]["id"], users["mallory@other.test"]["id"]
    tokens = {
        email: run.login(email)
        for email in ("alice@demo.test", "bob@demo.test", "mallory@other.test", "admin@demo.test")
    }
    truth = {
        user_id: run.control(f"transactions?company={company}&user={user_id}")
        for user_id, company in (
            (alice_id, "demo"),
            (bob_id, "demo"),
            (admin_id, "demo"),
            (mallory_id, "other"),
        )
    }
    bob_txs = truth[bob_id]
    bob_tx, alice_tx = bob_txs[0], truth[alice_id][0]

    def tricks(victim_id: str, victim_email: str, victim_txs: list[dict], own_tx: dict) -> list[str]:
        victim_tx, victim_tx2 = victim_txs[0], victim_txs[1]
        return [
            "",
            "page_size=250",
            f"user={victim_id}",
            f"user={quote(victim_email)}",
            f"user={victim_email.split('@')[0]}",
            f"user={admin_id}",
            f"user={mallory_id}",
            "user=",
            f"user={victim_id}&page_size=250",
            f"user={victim_id}&tx_type=credit",
            f"id={victim_tx['id']}",
            f"id__in={victim_tx['id']},{victim_tx2['id']}",
            f"id__in={own_tx['id']},{victim_tx['id']}",
            f"account={victim_tx['account']}",
            f"account={victim_tx['account']}&user={victim_id}",
            f"collection={victim_tx['collection']}",
            f"parent={victim_tx['id']}",
            f"reference={victim_tx.get('reference') or 'x'}",
            "orderby=-amount",
            "orderby=user",
            "orderby=-user",
            "page=2&page_size=1",
            "page=999",
            "page=last",
            f"USER={victim_id}",
            f"User={victim_id}",
            f"user[]={victim_id}",
            f"user%5B%5D={victim_id}",
            f"%75ser={victim_id}",
            f"user__in={victim_id}",
            f"user__id={victim_id}",
            f"user.id={victim_id}",
            f"user={victim_id}&user={victim_id}",
            f"user={own_tx['user']['id']}&user={victim_id}",
            f"user={victim_id}%00",
            f"user={victim_id};user={own_tx['user']['id']}",
            f"page_size=1&user={victim_id}&page=2",
            f"%20user={victim_id}",
            f"user%20={victim_id}",
        ]

    headers_tricks = [
        ("X-Forwarded-Host", f"127.0.0.1:{run.rehive_port}"),
        ("X-Forwarded-For", "34.91.230.165"),
        ("X-Original-URL", f"/custom/transactions/?user={bob_id}"),
        ("X-Rewrite-URL", f"/custom/transactions/?user={bob_id}"),
        ("X-Rehive-User", bob_id),
        ("X-HTTP-Method-Override", "POST"),
    ]
    host = run.shared_service().url.removeprefix("http://")
    judges = []
    for caller, caller_id, victim_id, victim_email, victim_txs, own_tx in (
        ("alice@demo.test", alice_id, bob_id, "bob@demo.test", bob_txs, alice_tx),
        ("bob@demo.test", bob_id, alice_id, "alice@demo.test", truth[alice_id], bob_tx),
    ):
        token = tokens[caller]
        judge = Judge(run, caller_id, {tx["id"] for tx in truth[caller_id]})
        judges.append(judge)
        for query in tricks(victim_id, victim_email, victim_txs, own_tx):
            # Raw, so that the query reaches the service exactly as written.
            target = "/custom/transactions/" + (f"?{query}" if query else "")
            request = build("GET", target, [("Authorization", f"Token {token}")], host=host)
            answer = run.raw(request, f"{caller} {query[:60]}")
            body = json.loads(answer.body) if answer.status == 200 else None
            judge.answer(f"{caller.split('@')[0]} ?{query[:60]}", answer.status, body, token)
        for name, value in headers_tricks:
            response = run.get("/custom/transactions/", token, headers={name: value})
            judge.answer(f"{caller.split('@')[0]} {name}", response.status_code, _json(response), token)
        # Everything of one's own is there too (a page of 250 holds every seeded transaction).
        complete = run.get("/custom/transactions/", token, params={"page_size": "250"})
        seen = {tx["id"] for tx in complete.json()["data"]["results"]}
        if seen != judge.own_ids:
            judge.problems.append(f"{caller}: sees {len(seen)} of their {len(judge.own_ids)} transactions")

    # Not counted: links are built from the Host the caller sent (the README's "the host the request
    # came to"), so a caller who names the stand-in's address as Host gets links to it.
    spoofed = run.raw(
        build(
            "GET",
            "/custom/transactions/?page_size=1",
            [("Authorization", f"Token {tokens['alice@demo.test']}")],
            host=f"127.0.0.1:{run.rehive_port}",
        ),
        "alice with the stand-in as Host",
    )
    reflected = spoofed.status == 200 and f"127.0.0.1:{run.rehive_port}" in spoofed.body.decode()

    # Another company: refused whatever is asked.
    outsiders: Counter[int] = Counter()
    outsider_problems = []
    for who, token in (
        ("mallory", tokens["mallory@other.test"]),
        ("other company's service", "local-other-admin-token"),
    ):
        for params in (
            {},
            {"user": alice_id},
            {"user": mallory_id},
            {"page_size": "250"},
            {"id": alice_tx["id"]},
        ):
            response = run.get("/custom/transactions/", token, params=params)
            outsiders[response.status_code] += 1
            if response.status_code != 403:
                outsider_problems.append(f"{who} {params}: {response.status_code}")

    manage_figures, manage_problems = _manage(run, tokens)
    outsider_problems += manage_problems
    multi_figures, multi_problems = _multi(run)
    outsider_problems += multi_problems

    statuses = sum((judge.statuses for judge in judges), Counter())
    links = sum(judge.links for judge in judges)
    problems = [problem for judge in judges for problem in judge.problems] + outsider_problems
    figures = (
        f"{sum(statuses.values())} requests by alice and bob ({by_status(statuses)});"
        f" someone else's transaction seen: {sum('someone else' in p for p in problems)};"
        f" {links} pagination links, pointing at Rehive: {sum('does not point' in p for p in problems)};"
        f" other company refused {outsiders[403]}/{sum(outsiders.values())};"
        f" {manage_figures};"
        f" (not counted: a caller-sent Host is reflected in links: {'yes' if reflected else 'no'});"
        f" {multi_figures}"
    )
    progress(NAME, figures)
    notes = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
    return Result(NAME, figures, not problems, tuple(notes))
