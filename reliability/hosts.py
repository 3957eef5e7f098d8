"""Check 7, hosts: two independent gunicorn masters ("hosts") share one PostgreSQL inbox while each is
SIGKILLed and restarted again and again; nothing is lost and nothing is handled twice.

The same Rehive-like sender as the crash check (the same id on every retry, retries on anything but
200/201/202 and on timeouts), spreading deliveries over both hosts as a load balancer would, and
sending some duplicates to both hosts at the same moment. The PostgreSQL server is a throwaway
cluster of this check's own (devtools/postgres.py).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter

import requests

from devtools.postgres import create_database, start_cluster
from devtools.processes import listening_socket
from reliability import crash
from reliability.crash import Delivery, Sender
from reliability.stack import COMPANY, Result, Run, by_status, progress
from store import open_store

NAME = "hosts"
HOSTS = ("host-a", "host-b")
KILLS_PER_HOST = 6
BOTH_AT_ONCE = 0.5  # share of the duplicates sent to both hosts at the same moment
CREDIT_BASE = 100_000  # savings shares of this check start here (the crash check's stay below)
SETTLE_SECONDS = 120


class TwoHostSender(Sender):
    """The crash check's sender, choosing a host for every attempt; some duplicates go to both at once."""

    def __init__(self, run: Run, urls: list[str], deliveries: list[Delivery], rng: random.Random) -> None:
        super().__init__(run, urls[0], deliveries)
        self.urls = [url + "/webhooks/" for url in urls]
        self.both = {id(d) for d in deliveries if d.duplicate and rng.random() < BOTH_AT_ONCE}
        self.twins: list[Delivery] = []
        self._rng = random.Random(rng.random())
        self._rng_lock = threading.Lock()

    def _url(self) -> str:
        with self._rng_lock:
            return self._rng.choice(self.urls)

    def _deliver(self, session: requests.Session, delivery: Delivery, url: str | None = None) -> None:
        if url is not None or id(delivery) not in self.both:
            super()._deliver(session, delivery, url)
            return
        twin = Delivery(delivery.event_id, delivery.body, True)
        self.twins.append(twin)
        other = threading.Thread(target=self._deliver_alone, args=(twin, self.urls[1]))
        other.start()
        super()._deliver(session, delivery, self.urls[0])
        other.join()

    def _deliver_alone(self, delivery: Delivery, url: str) -> None:
        with requests.Session() as session:
            session.trust_env = False
            super()._deliver(session, delivery, url)


def run(run: Run) -> Result:
    """Two hosts on one Postgres: deliver, kill and restart each, then count lost and handled twice."""
    rng = random.Random(run.seed + 7)
    progress(NAME, "starting a throwaway PostgreSQL cluster")
    cluster = start_cluster()
    try:
        return _run(run, rng, create_database(cluster, "hosts"))
    finally:
        cluster.stop()


def _run(run: Run, rng: random.Random, url: str) -> Result:
    progress(NAME, f"seed {run.seed}: creating {crash.CREDITS} credits in the stand-in")
    credits, transactions = crash._create_credits(run, rng, base=CREDIT_BASE)
    deliveries = crash._deliveries(rng, transactions)
    unique = {delivery.event_id for delivery in deliveries}
    duplicates = sum(delivery.duplicate for delivery in deliveries)
    store = open_store(url, listen=False, pool_size=2)

    envs, socks, services = {}, {}, {}
    for host in HOSTS:
        env = run.env(
            host,
            SAVINGS_PERCENT=str(crash.SAVINGS_PERCENT),
            WEBHOOK_LEASE_SECONDS="3",
            WEBHOOK_RETRY_FIRST_SECONDS="0.2",
            WEBHOOK_RETRY_MAX_SECONDS="2",
        )
        env.update(DATABASE_PATH="", DATABASE_URL=url)
        envs[host], socks[host] = env, listening_socket()  # each host keeps its port across restarts
    try:
        for host in HOSTS:  # both at once on a fresh database: the schema is created exactly once
            services[host] = run.start_service(host, envs[host], socks[host])
        run.control(latency_ms=crash.HANDLER_LATENCY_MS)
        sender = TwoHostSender(run, [services[host].url for host in HOSTS], deliveries, rng)
        kills = dict.fromkeys(HOSTS, 0)
        schedule = [HOSTS[n % 2] for n in range(2 * KILLS_PER_HOST)]
        progress(
            NAME,
            f"{len(deliveries)} deliveries ({len(unique)} events, {duplicates} duplicates, {len(sender.both)}"
            f" of them to both hosts at once) while each host is killed {KILLS_PER_HOST} times",
        )
        started = time.monotonic()
        sender.start()
        for host in schedule:
            time.sleep(rng.uniform(0.3, 1.6))
            services[host].kill()
            kills[host] += 1
            time.sleep(rng.choice((0.0, rng.uniform(0.05, 0.8))))
            services[host] = run.start_service(host, envs[host], socks[host])
            progress(NAME, f"killed {host} ({kills[host]}) at {time.monotonic() - started:.1f} s, restarted")
        sender.join(timeout=240)
        if sender.running():
            raise RuntimeError("the sender did not finish within 240 s")
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            counts = store.counts()
            if not (counts.get("received") or counts.get("processing") or counts.get("failed")):
                break
            time.sleep(0.2)
        stored = {row["id"]: row for row in _rows(store)}
    finally:
        for service in services.values():
            service.stop()
        store.shutdown()
        run.reset_faults()
    elapsed = time.monotonic() - started
    transfers = [tx for tx in crash._savings_transfers(run) if tx["amount"] >= CREDIT_BASE]

    everyone = deliveries + sender.twins
    attempts = Counter(status for delivery in everyone for status in delivery.statuses)
    acked_ids = {delivery.event_id for delivery in everyone if delivery.acked}
    gave_up = sum(not delivery.acked for delivery in everyone)
    statuses = Counter(row["status"] for row in stored.values())
    lost_events = sorted(
        event_id for event_id in acked_ids if stored.get(event_id, {}).get("status") != "done"
    )
    retaken = sum(row["attempts"] > 1 for row in stored.values())

    twice, missing, unexpected = crash.count_transfers(credits, transfers)
    finished: Counter[str] = Counter()
    for host in HOSTS:
        log = (run.workdir / f"{host}.log").read_text(errors="replace")
        finished.update(re.findall(r"webhook done company=\S+ id='([^']+)'", log))
    done_twice = sum(1 for count in finished.values() if count > 1)
    lost = len(lost_events) + len(missing)
    leaked = sum(bool(run.canaries.found_in(repr(row).encode())) for row in stored.values())

    figures = (
        f"seed {run.seed}; 2 hosts on one PostgreSQL, SIGKILLs {kills[HOSTS[0]]} + {kills[HOSTS[1]]} in"
        f" {elapsed:.0f} s; sent {len(everyone)} deliveries ({len(unique)} events + {duplicates} duplicates,"
        f" {len(sender.twins)} sent to both hosts at once) in {sum(attempts.values())} attempts"
        f" ({by_status(attempts)}); stored {len(stored)}; done {statuses['done']} ({retaken} re-taken);"
        f" done twice (per the logs) {done_twice}; lost {lost}; handled twice {twice}; savings transfers"
        f" {len(transfers)} for {sum(c.share > 0 for c in credits)} qualifying credits"
    )
    notes = []
    if gave_up:
        notes.append(f"{gave_up} deliveries were never acknowledged")
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
    if leaked:
        notes.append(f"{leaked} stored rows hold a canary (admin token or webhook secret)")
    clean = not (gave_up or lost or twice or unexpected or done_twice or leaked)
    clean = clean and min(kills.values()) >= 5 and len(stored) == statuses["done"] == len(unique)
    return Result(NAME, figures, clean, tuple(notes))


def _rows(store) -> list[dict]:
    rows, last = [], 0
    while batch := store.export_rows(last, 1000):
        rows += [row for row in batch if row["company"] == COMPANY]
        last = batch[-1]["seq"]
    return rows
