"""Recover deliveries Rehive gave up on: read its delivery history to our URL, store what we lack.

Rehive retries a delivery for hours, not days, and switches off webhooks that keep answering 5xx, so
an event sent while we were down can be gone for good. Its history (`GET /3/admin/webhook-tasks/`,
filtered by `webhook__url` and `created__gte`) lists every delivery without its payload; a task's
detail carries the payload, and its id is the envelope id, so storing it under that id lets the
inbox's UNIQUE constraint keep it once, whether Rehive's own retry or we get there first.

Those answers carry the webhook's secret (`webhook.secret`): nothing here logs or prints an item.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Flask

import metrics
from auth import our_company
from companies import CompanyRegistry, registry_of
from errors import ApiError
from rehive_client import RehiveBadResponse, RehiveClient, RehiveError, RehiveRequestError, admin
from store import TOKEN_OK
from webhooks.envelope import MAX_ID_LENGTH, EnvelopeError, parse_envelope
from webhooks.extension import webhooks_of
from webhooks.inbox import Inbox

log = logging.getLogger("webhooks")

PAGE_SIZE = 100
MAX_PAGES = 1_000  # a bound on one run, whatever the history answers
PERIODIC_JOB = "webhooks.reconcile"
PERIODIC_SINCE_SECONDS = 24 * 3600
_SINCE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class Counts:
    """What one run saw: tasks listed, already stored, missing (stored now unless dry run), unreadable."""

    listed: int = 0
    already_stored: int = 0
    missing: int = 0
    added: int = 0
    unreadable: int = 0

    def line(self, dry_run: bool) -> str:
        """Return the counts as one line for the CLI and the log."""
        added = f"would add {self.missing}" if dry_run else f"added {self.added}"
        return (
            f"listed {self.listed}, already stored {self.already_stored}, {added},"
            f" unreadable {self.unreadable}"
        )


def parse_since(text: str) -> float:
    """Read a duration such as `24h`, `90m`, `7d` or `3600` (seconds) and return seconds."""
    match = _SINCE.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def companies(app: Flask) -> list[tuple[str, RehiveClient]]:
    """Return each company to reconcile with the client that holds its token.

    Single-company mode has one; multi-company mode plugs in here, one entry per active company.
    """
    registry = registry_of(app)
    if isinstance(registry, CompanyRegistry):
        found = []
        for registration in registry.all():
            if registration.active and registration.token_status == TOKEN_OK:
                try:
                    found.append((registration.company, registry.client(registration.company)))
                except ApiError:  # deactivated meanwhile
                    continue
        return found
    with app.app_context():
        return [(our_company(), admin.base(app))]


def reconcile(
    client: RehiveClient,
    inbox: Inbox,
    company: str,
    webhook_url: str,
    since: float,
    *,
    dry_run: bool = False,
    only_undelivered: bool = False,
) -> Counts:
    """Store every delivery to `webhook_url` created since `since` (epoch seconds) that we lack."""
    counts = Counts()
    params: dict[str, Any] = {
        "webhook__url": webhook_url,
        "created__gte": str(int(since * 1000)),  # Rehive's times are ms since the epoch
        "page_size": PAGE_SIZE,
    }
    if only_undelivered:
        params["completed__isnull"] = "true"
    for page in range(1, MAX_PAGES + 1):
        body = client.get("admin/webhook-tasks/", params={**params, "page": page})
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise RehiveBadResponse("Rehive's webhook-task list has no results")
        for item in data["results"]:
            _reconcile_one(client, inbox, company, webhook_url, item, counts, dry_run)
        if not data.get("next"):
            break
    for name in ("listed", "already_stored", "added", "unreadable"):
        metrics.RECONCILE_EVENTS.labels(name).inc(getattr(counts, name))
    return counts


def _reconcile_one(
    client: RehiveClient,
    inbox: Inbox,
    company: str,
    webhook_url: str,
    item: Any,
    counts: Counts,
    dry_run: bool,
) -> None:
    webhook = item.get("webhook") if isinstance(item, dict) else None
    if isinstance(webhook, dict) and webhook.get("url") != webhook_url:
        return  # not a delivery to us: Rehive answered a filter we rely on differently than documented
    counts.listed += 1
    task_id = item.get("id") if isinstance(item, dict) else None
    event = webhook.get("event") if isinstance(webhook, dict) else None
    if (
        isinstance(task_id, bool)
        or not isinstance(task_id, str | int)
        or not 0 < len(str(task_id)) <= MAX_ID_LENGTH
        or not isinstance(event, str)
    ):
        counts.unreadable += 1
        log.warning("webhook reconcile: a task without a usable id or event")
        return
    task_id = str(task_id)
    if inbox.get(task_id, company):
        counts.already_stored += 1
        return
    counts.missing += 1
    if dry_run:
        return
    try:
        detail = client.get(f"admin/webhook-tasks/{quote(task_id, safe='')}/").get("data")
        payload = detail.get("data") if isinstance(detail, dict) else None
        # Rehive does not say whether `data` is the envelope's data or the whole envelope: take either.
        if isinstance(payload, dict) and isinstance(payload.get("data"), dict) and "event" in payload:
            payload = payload["data"]
        envelope = json.dumps({"id": task_id, "event": event, "company": company, "data": payload})
        parsed = parse_envelope(envelope.encode("utf-8"))
    except (RehiveRequestError, RehiveBadResponse, EnvelopeError) as exc:
        counts.unreadable += 1
        log.warning("webhook reconcile: task %r unreadable: %s", task_id, type(exc).__name__)
        return
    if inbox.insert(company, parsed.id, parsed.name, envelope):
        counts.added += 1
        log.info("webhook reconciled company=%s id=%r event=%s", company, parsed.id, parsed.name)
    else:  # Rehive's own retry got here meanwhile
        counts.already_stored += 1


def reconcile_all(app: Flask, webhook_url: str, since: float, **options: Any) -> Counts:
    """Reconcile every company this service serves; return the counts added up."""
    inbox = webhooks_of(app).inbox
    total = Counts()
    for company, client in companies(app):
        counts = reconcile(client, inbox, company, webhook_url, since, **options)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(counts, name))
    if total.added:
        webhooks_of(app).pool.wake()
    return total


def run_periodic_once(app: Flask, now: float | None = None) -> Counts | None:
    """Reconcile if no process did within WEBHOOK_RECONCILE_MINUTES; None when it was not our turn."""
    settings = app.config["SETTINGS"]
    every = settings.webhook_reconcile_minutes * 60
    now = time.time() if now is None else now
    if not webhooks_of(app).inbox.acquire_periodic(PERIODIC_JOB, every, now):
        return None
    since = now - max(PERIODIC_SINCE_SECONDS, 2 * every)
    counts = reconcile_all(app, settings.webhook_url, since, only_undelivered=True)
    log.info("webhook reconcile (periodic): %s", counts.line(dry_run=False))
    return counts


def start_periodic(app: Flask) -> threading.Thread:
    """Start the thread that runs reconcile every WEBHOOK_RECONCILE_MINUTES, one process at a time."""
    every = app.config["SETTINGS"].webhook_reconcile_minutes * 60

    def loop() -> None:
        # Look a few times per period (at least once a minute), at a random phase per process; the
        # store lets one process run per period, so the others only find it taken.
        interval = min(every / 4, 60.0)
        pause = threading.Event()
        pause.wait(random.uniform(0, interval))
        while True:
            try:
                run_periodic_once(app)
            except (RehiveError, ApiError) as exc:
                log.warning("webhook reconcile (periodic) failed: %s", type(exc).__name__)
            except Exception:  # a broken store must not end the thread; it tries again next time
                log.exception("webhook reconcile (periodic) failed")
            finally:
                webhooks_of(app).inbox.close()
            pause.wait(interval)

    thread = threading.Thread(target=loop, name="webhooks-reconcile", daemon=True)
    thread.start()
    return thread
