"""Check 1, crash: SIGKILL gunicorn again and again while a Rehive-like sender delivers; nothing is lost.

Credits are created in the stand-in (which has no webhook pointing at us), their envelopes are built
from `GET /3/admin/transactions/<id>/` and delivered by our own sender, which behaves like Rehive:
the same id on every retry, retries on any answer but 200/201/202 and on timeouts. At the end every
unique event must be `done` and the stand-in must hold exactly one savings transfer per qualifying
credit.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from devtools.processes import Process, listening_socket
from reliability.stack import COMPANY, Result, Run, by_status, progress

NAME = "crash"
CREDITS = 1_100  # credits created in the stand-in; each gives a transaction.execute event
CREATE_EVENTS = 240  # some credits also get a transaction.create event (no handler: done at once)
DELIVERIES = 2_000  # deliveries the sender starts, duplicates included (a third of them)
KILLS = 12
SENDER_THREADS = 4  # as many as the stand-in's courier
DELIVERY_TIMEOUT = 5.0  # Rehive cuts a delivery off after 5 s
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # Rehive's 7 retries, compressed like the stand-in's
PACE_PER_SECOND = 110  # spreads the deliveries over the time the kills take
SAVINGS_PERCENT = 10
SAVINGS_ACCOUNT = "savings"
HANDLER_LATENCY_MS = 25  # added by the stand-in to each call during this check
SETTLE_SECONDS = 120  # at most this long for the inbox to finish after the last kill
USERS = ("alice@demo.test", "bob@demo.test", "admin@demo.test")


@dataclass
class Credit:
    """One credit created in the stand-in, and the savings transfer it should cause (0: none)."""

    tx_id: str
    user_id: str
    share: int


@dataclass
class Delivery:
    """One delivery the sender makes: an envelope, and how it went."""

    event_id: str
    body: bytes
    duplicate: bool
    attempts: int = 0
    statuses: list[str] = field(default_factory=list)
    acked: bool = False


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _create_credits(run: Run, rng: random.Random, base: int = 100) -> tuple[list[Credit], list[dict]]:
    """Create the credits in the stand-in; return them and their admin transaction objects.

    Qualifying credits are worth 10 x (base + n): another check passes another base, so that the
    savings transfers of each check can be told apart in the one stand-in.
    """
    users = run.users()
    plan = []
    for n in range(CREDITS):
        user_id = users[rng.choice(USERS)]["id"]
        kind = rng.random()
        if kind < 0.7:  # qualifying: Complete, and an amount whose share is unique in the run
            status, amount = "Complete", 10 * (base + n)
        elif kind < 0.85:  # executed but Failed: nothing to save
            status, amount = "Failed", rng.randint(100, 10_000)
        else:  # Complete but too small: 10 % of it rounds down to 0
            status, amount = "Complete", rng.randint(1, 9)
        body = {
            "id": _uuid4(rng),
            "user": user_id,
            "amount": amount,
            "currency": rng.choice(("USD", "EUR")),
            "status": status,
            "subtype": "deposit",
        }
        share = amount * SAVINGS_PERCENT // 100 if status == "Complete" else 0
        plan.append((body, Credit(body["id"], user_id, share)))

    def create(body: dict) -> dict:
        created = run.rehive_admin("POST", "admin/transactions/credit/", json=body)
        if created.status_code != 201:
            raise RuntimeError(f"the stand-in refused a credit: {created.status_code} {created.text[:200]}")
        fetched = run.rehive_admin("GET", f"admin/transactions/{body['id']}/")
        fetched.raise_for_status()
        return fetched.json()["data"]

    with ThreadPoolExecutor(2) as pool:
        transactions = list(pool.map(create, [body for body, _ in plan]))
    return [credit for _, credit in plan], transactions


def _deliveries(rng: random.Random, transactions: list[dict]) -> list[Delivery]:
    """Build the envelopes and the order they are sent in: each duplicate some time after its first."""
    events = []
    for tx in transactions:
        events.append({"id": _uuid4(rng), "event": "transaction.execute", "company": COMPANY, "data": tx})
    for tx in rng.sample(transactions, CREATE_EVENTS):
        events.append({"id": _uuid4(rng), "event": "transaction.create", "company": COMPANY, "data": tx})
    rng.shuffle(events)
    bodies = [json.dumps(event).encode() for event in events]
    keyed = [(float(n), Delivery(event["id"], bodies[n], False)) for n, event in enumerate(events)]
    for _ in range(DELIVERIES - len(events)):
        n = rng.randrange(len(events))
        keyed.append((n + rng.uniform(0.5, 300), Delivery(events[n]["id"], bodies[n], True)))
    keyed.sort(key=lambda item: item[0])
    return [delivery for _, delivery in keyed]


class Sender:
    """A Rehive-like sender: a few threads, the same id on every retry, retries on failure."""

    def __init__(self, run: Run, url: str, deliveries: list[Delivery]) -> None:
        self.run = run
        self.url = url + "/webhooks/"
        self.deliveries = deliveries
        self.headers = {
            "Authorization": f"Secret {run.canaries.webhook_secret}",
            "Content-Type": "application/json",
            "User-Agent": "rehive-platform/3.0-reliability",
        }
        self._next = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(SENDER_THREADS)]
        self.started = 0.0
        self.stop = threading.Event()

    def start(self) -> None:
        """Start delivering, paced from now."""
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def running(self) -> bool:
        """Tell whether any delivery is still in progress."""
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for every delivery to end."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> tuple[int, Delivery] | None:
        with self._lock:
            if self._next >= len(self.deliveries) or self.stop.is_set():
                return None
            index = self._next
            self._next += 1
            return index, self.deliveries[index]

    def _work(self) -> None:
        session = requests.Session()
        session.trust_env = False
        try:
            while (taken := self._take()) is not None:
                index, delivery = taken
                wait = self.started + index / PACE_PER_SECOND - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._deliver(session, delivery)
        finally:
            session.close()

    def _url(self) -> str:
        """Return where the next attempt goes (one URL here; the hosts check spreads them)."""
        return self.url

    def _deliver(self, session: requests.Session, delivery: Delivery, url: str | None = None) -> None:
        """Send `delivery` as Rehive does, to `url` or else to `_url()` on every attempt."""
        for attempt in range(1 + len(RETRY_DELAYS)):
            if attempt:
                if self.stop.is_set():
                    return
                time.sleep(RETRY_DELAYS[attempt - 1])
            delivery.attempts += 1
            try:
                response = session.post(
                    url or self._url(), data=delivery.body, headers=self.headers, timeout=DELIVERY_TIMEOUT
                )
            except requests.Timeout:
                delivery.statuses.append("timeout")
                continue
            except requests.ConnectionError:
                delivery.statuses.append("connection error")
                continue
            except requests.RequestException:  # e.g. the answer was cut off by the kill
                delivery.statuses.append("broken answer")
                continue
            self.run.seen.response(response)
            delivery.statuses.append(str(response.status_code))
            if response.status_code in (200, 201, 202):
                delivery.acked = True
                return


def _inbox(database: str) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        return dict(conn.execute("SELECT id, status FROM webhook_events WHERE company = ?", (COMPANY,)))


def _retaken(database: str) -> int:
    """Return how many events were claimed more than once (their worker was killed holding them)."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        return conn.execute("SELECT count(*) FROM webhook_events WHERE attempts > 1").fetchone()[0]


def _settled(database: str) -> bool:
    statuses = Counter(_inbox(database).values())
    return not (statuses["received"] or statuses["processing"] or statuses["failed"])


def count_transfers(credits: list[Credit], transfers: list[dict]) -> tuple[int, list[str], int]:
    """Match savings transfers to qualifying credits (each share is unique): twice, missing, unexpected."""
    expected = {credit.share: credit for credit in credits if credit.share > 0}
    made = Counter((tx["user"]["id"], tx["amount"]) for tx in transfers)
    twice = sum(1 for (_, share), count in made.items() if count > 1 and share in expected)
    missing = [c.tx_id for c in expected.values() if made[(c.user_id, c.share)] == 0]
    unexpected = sum(
        count
        for (user, share), count in made.items()
        if share not in expected or expected[share].user_id != user
    )
    return twice, missing, unexpected


def _savings_transfers(run: Run) -> list[dict]:
    legs = run.control("transactions?company=demo&tx_type=credit&partner__isnull=false")
    return [
        tx
        for tx in legs
        if ((tx.get("account_currency") or {}).get("account") or {}).get("name") == SAVINGS_ACCOUNT
    ]


def run(run: Run) -> Result:
    """Deliver, kill and restart, then count what was stored, done, lost and handled twice."""
    rng = random.Random(run.seed)
    progress(NAME, f"seed {run.seed}: creating {CREDITS} credits in the stand-in")
    credits, transactions = _create_credits(run, rng)
    deliveries = _deliveries(rng, transactions)
    unique = {delivery.event_id for delivery in deliveries}
    duplicates = sum(delivery.duplicate for delivery in deliveries)
    gaps = [rng.uniform(0.3, 2.0) for _ in range(KILLS)]
    downtimes = [rng.choice((0.0, 0.0, rng.uniform(0.05, 0.8))) for _ in range(KILLS)]

    env = run.env(
        NAME,
        SAVINGS_PERCENT=str(SAVINGS_PERCENT),
        WEBHOOK_LEASE_SECONDS="3",
        WEBHOOK_RETRY_FIRST_SECONDS="0.2",
        WEBHOOK_RETRY_MAX_SECONDS="2",
    )
    database = env["DATABASE_PATH"]
    sock = listening_socket()  # kept across restarts: deliveries queue in its backlog meanwhile
    service: Process = run.start_service(NAME, env, sock)
    # Each Rehive call of the handler takes a little while, so kills land inside handlers too.
    run.control(latency_ms=HANDLER_LATENCY_MS)
    sender = Sender(run, service.url, deliveries)
    progress(
        NAME,
        f"{len(deliveries)} deliveries ({len(unique)} events, {duplicates} duplicates) while gunicorn is"
        f" killed {KILLS} times",
    )
    kills = 0
    started = time.monotonic()
    try:
        sender.start()
        for gap, downtime in zip(gaps, downtimes, strict=True):
            time.sleep(gap)
            service.kill()
            kills += 1
            time.sleep(downtime)
            service = run.start_service(NAME, env, sock)
            progress(NAME, f"kill {kills}/{KILLS} at {time.monotonic() - started:.1f} s, restarted")
        sender.join(timeout=240)
        if sender.running():
            raise RuntimeError("the sender did not finish within 240 s")
        progress(
            NAME, f"all deliveries answered at {time.monotonic() - started:.1f} s; waiting for the inbox"
        )
        deadline = time.monotonic() + SETTLE_SECONDS
        while not _settled(database) and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = _inbox(database)
        retaken = _retaken(database)
    finally:
        sender.stop.set()
        service.stop()
        run.reset_faults()
    transfers = _savings_transfers(run)
    elapsed = time.monotonic() - started

    attempts = Counter(status for delivery in deliveries for status in delivery.statuses)
    acked_ids = {delivery.event_id for delivery in deliveries if delivery.acked}
    gave_up = sum(not delivery.acked for delivery in deliveries)
    statuses = Counter(stored.values())
    done = statuses["done"]
    lost_events = sorted(event_id for event_id in acked_ids if stored.get(event_id) != "done")

    twice, missing, unexpected = count_transfers(credits, transfers)
    log = (run.workdir / f"{NAME}.log").read_text(errors="replace")
    moved = Counter(re.findall(r"savings moved company=\S+ id='([^']+)'", log))
    reruns = sum(1 for count in moved.values() if count > 1)
    finished = Counter(re.findall(r"webhook done company=\S+ id='([^']+)'", log))
    done_twice = sum(1 for count in finished.values() if count > 1)
    lost = len(lost_events) + len(missing)

    figures = (
        f"seed {run.seed}; {kills} SIGKILLs in {elapsed:.0f} s; sent {len(deliveries)} deliveries"
        f" ({len(unique)} events + {duplicates} duplicates) in {sum(attempts.values())} attempts"
        f" ({by_status(attempts)}); acknowledged {len(deliveries) - gave_up}/{len(deliveries)}"
        f" ({len(acked_ids)} events); stored {len(stored)}; done {done} ({retaken} re-taken after their"
        f" worker was killed); done twice (per the log) {done_twice}; lost {lost}; handled twice {twice};"
        f" savings transfers {len(transfers)} for {sum(c.share > 0 for c in credits)} qualifying credits;"
        f" transfer step seen re-run after a kill {reruns} (absorbed by Idempotency-Key)"
    )
    notes = []
    if gave_up:
        notes.append(f"{gave_up} deliveries were never acknowledged after {1 + len(RETRY_DELAYS)} attempts")
    if len(stored) != len(acked_ids) or set(stored) - unique:
        notes.append(f"stored {len(stored)} rows for {len(acked_ids)} acknowledged events")
    if lost_events:
        notes.append(f"acknowledged but not done: {lost_events[:5]} (statuses {dict(statuses)})")
    if missing:
        notes.append(f"qualifying credits without a savings transfer: {missing[:5]}")
    if unexpected:
        notes.append(f"{unexpected} savings transfers match no qualifying credit")
    if twice:
        notes.append(f"{twice} credits have more than one savings transfer")
    if done_twice:
        notes.append(f"{done_twice} events were marked done more than once")
    clean = not (gave_up or lost or twice or unexpected or done_twice)
    clean = clean and kills >= 10 and len(stored) == done == len(unique)
    return Result(NAME, figures, clean, tuple(notes))
