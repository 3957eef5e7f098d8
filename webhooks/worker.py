"""Run handlers outside the request: claim a due event, run its handlers, settle the row."""

from __future__ import annotations

import atexit
import json
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable

from flask import Flask

import metrics
from companies import CONFIRMED, company_of, registry_of
from errors import ApiError
from rehive_client import (
    RehiveError,
    RehiveRateLimited,
    RehiveTimeout,
    RehiveUnauthorized,
    RehiveUnavailable,
    event_company,
)
from store import Claim, Store
from webhooks.events import Event, is_sensitive
from webhooks.registry import Registry

log = logging.getLogger("webhooks")

POLL_SECONDS = 0.5  # how soon work from other processes and due retries is noticed
# A live worker keeps renewing its lease, so only a dead one loses it; but a handler stuck this many
# leases long is given up, so that another worker may try.
MAX_RENEWED_LEASES = 10
MAX_LOGGED_ERROR = 200
MAX_TRACKED_UNCOUNTED = 10_000  # events whose uncounted failures this process remembers
COMPANY_WAIT_SECONDS = 3.0  # how long a worker round waits for Rehive to confirm our company
COMPANY_ASK_EVERY_SECONDS = 5.0  # after a failed ask, workers ask again no sooner than this
RETENTION_CHECK_SECONDS = 60.0  # how often an idle process asks whether retention is due
RETENTION_EVERY_SECONDS = 3600.0  # how often, across all processes and hosts, done rows are pruned
# A worker that finishes an event claims the next in the same write (store.finish_and_claim), at most
# this many times in a row; then it goes round again: company check, expired leases buried, stop asked.
CHAIN_LIMIT = 16


def retry_delay(attempts: int, first: float, maximum: float) -> float:
    """Return the wait after the `attempts`-th failed attempt: `first`, doubling, at most `maximum`."""
    # The exponent is capped: uncounted retries may go on for days, and 2.0 ** 1024 overflows a float.
    return min(first * 2 ** min(max(attempts - 1, 0), 60), maximum)


def not_our_fault(exc: BaseException) -> str | None:
    """Say why a handler's failure is Rehive's, not the event's (then it uses up no attempt), or None."""
    if isinstance(exc, RehiveRateLimited):
        return "Rehive is throttling us"
    if isinstance(exc, RehiveTimeout):
        return "Rehive did not answer in time"
    if isinstance(exc, RehiveUnavailable):
        return "Rehive is unavailable"
    return None


def _company_fault(exc: BaseException) -> str | None:
    """Multi mode: say why a failure is the company's state (refused token, deactivated), or None.

    Such events wait for the company (the claim skips them) without using up attempts.
    """
    if isinstance(exc, RehiveUnauthorized):
        return "Rehive refused the company's token"
    if isinstance(exc, ApiError) and exc.status in (403, 502):
        return "the company is not active or its token cannot be used"
    return None


def retry_after_seconds(exc: BaseException) -> float | None:
    """Return the seconds of the Retry-After Rehive sent with this error, if it sent a usable one."""
    value = getattr(exc, "retry_after", None)
    try:
        seconds = float(value) if isinstance(value, str) else None
    except ValueError:  # an HTTP date, or garbage: use our own backoff
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _event(claim: Claim) -> Event:
    return Event(company=claim.company, id=claim.id, name=claim.event, data=json.loads(claim.body)["data"])


def _loggable(exc: BaseException, event_name: str) -> str:
    # The message may quote the data; for events carrying codes, the type is all a log gets.
    if is_sensitive(event_name):
        return type(exc).__name__
    return f"{type(exc).__name__}: {str(exc)[:MAX_LOGGED_ERROR]!r}"


class WorkerPool:
    """Threads that process the inbox of one app; several pools, in several processes, may share it."""

    def __init__(
        self,
        app: Flask,
        inbox: Store,
        registry: Registry,
        *,
        threads: int,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.app = app
        self.inbox = inbox
        self.registry = registry
        self.threads = threads
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.settings = app.config["SETTINGS"]
        # One wake-up per stored event, for one thread: waking them all for one row makes every
        # thread race for the write lock and all but one of them find nothing.
        self._wake = threading.Condition()
        self._wakeups = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, tuple[Claim, float]] = {}  # seq -> (claim, monotonic start)
        self._running_lock = threading.Lock()
        # (company, id) -> consecutive failures not counted as attempts, to grow their backoff.
        self._uncounted: dict[tuple[str, str], int] = {}
        self._retention_lock = threading.Lock()
        self._next_retention_check = 0.0

    @property
    def running(self) -> bool:
        """Tell whether any worker thread is alive."""
        return any(thread.is_alive() for thread in self._threads)

    def wake(self) -> None:
        """Make one idle worker look for work now (called after a new event is stored)."""
        with self._wake:
            self._wakeups += 1
            self._wake.notify()

    # -- one unit of work --------------------------------------------------------------------

    def process_one(self) -> bool:
        """Claim a due event and run its handlers (and up to CHAIN_LIMIT - 1 more); False if none was due."""
        return self._process_some() is not None

    def _process_some(self) -> int | None:
        """Return how many events were run (0: only expired leases were buried), None if nothing was due."""
        now = self.clock()
        if not self._company_checked():
            return None
        # Single mode: the configured company's events only; multi mode: those of companies that are
        # active with a working token (the others' wait in the inbox, neither run nor made dead).
        scope = registry_of(self.app).claim_scope()
        if not self.inbox.has_due(now, **scope):
            return None
        buried = self.inbox.bury_expired(self.settings.webhook_max_attempts, now)
        for row in buried:
            self._count("dead", row["event"])
            log.error(
                "webhook dead company=%s id=%r event=%s attempts=%d error=lease expired",
                row["company"],
                row["id"],
                row["event"],
                row["attempts"],
            )
        claim = self.inbox.claim_next(self.settings.webhook_lease_seconds, now, **scope)
        if claim is None:
            return 0 if buried else None
        handled = 0
        while claim is not None:
            handled += 1
            chain = scope if handled < CHAIN_LIMIT and not self._stopping.is_set() else None
            claim = self._run_handlers(claim, chain)
        return handled

    def _company_checked(self) -> bool:
        """Tell whether handlers may run: only once Rehive has confirmed the admin token's company.

        Until then (or for ever, if it is another company's token) events stay in the inbox, unclaimed.
        """
        try:
            state = company_of(self.app).wait(COMPANY_WAIT_SECONDS, not_within=COMPANY_ASK_EVERY_SECONDS)
        except (RehiveError, ApiError):  # logged where it was met; asked again in a later round
            return False
        return state == CONFIRMED

    def drain(self, threads: int = 1) -> int:
        """Process events until none is due, on `threads` threads; return how many were handled."""
        counts = [0] * threads

        def run(slot: int) -> None:
            while (handled := self._process_some()) is not None:
                counts[slot] += handled

        if threads == 1:
            run(0)
            return counts[0]

        def run_in_thread(slot: int) -> None:
            try:
                run(slot)
            finally:
                self.inbox.close()

        workers = [threading.Thread(target=run_in_thread, args=(slot,)) for slot in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(counts)

    def _run_handlers(self, claim: Claim, chain: dict | None = None) -> Claim | None:
        """Run and settle `claim`; with `chain` (a claim scope), return the next claim taken on success."""
        started = time.monotonic()
        with self._running_lock:
            self._running[claim.seq] = (claim, started)
        try:
            return self._run_and_settle(claim, started, chain)
        finally:
            with self._running_lock:
                del self._running[claim.seq]

    def _run_and_settle(self, claim: Claim, started: float, chain: dict | None = None) -> Claim | None:
        try:
            event = _event(claim)
            handlers = self.registry.handlers_for(claim.event)
            with self.app.app_context(), event_company(claim.company):
                client = registry_of(self.app).client(claim.company)
                for handler in handlers:
                    handler(event, client)
        except Exception as exc:
            self._observe(claim.event, started)
            self._record_failure(claim, exc)
            return None
        elapsed_ms = (time.monotonic() - started) * 1000
        self._observe(claim.event, started)
        self._forget_uncounted(claim)
        following = None
        if chain is None:
            finished = self.inbox.finish(claim, self.clock())
        else:
            lease = self.settings.webhook_lease_seconds
            finished, following = self.inbox.finish_and_claim(claim, lease, self.clock(), **chain)
        if finished:
            self._count("done", claim.event)
            log.info(
                "webhook done company=%s id=%r event=%s handlers=%d attempt=%d ms=%.0f",
                claim.company,
                claim.id,
                claim.event,
                len(handlers),
                claim.attempts,
                elapsed_ms,
            )
        else:
            log.warning(
                "webhook lease lost company=%s id=%r event=%s: another worker took it over after %.0f ms",
                claim.company,
                claim.id,
                claim.event,
                elapsed_ms,
            )
        return following

    def _record_failure(self, claim: Claim, exc: Exception) -> None:
        settings = self.settings
        now = self.clock()
        where = f"company={claim.company} id={claim.id!r} event={claim.event}"
        reason = not_our_fault(exc)
        if reason is None and self.settings.multi:
            reason = _company_fault(exc)
        if reason is not None:
            # Rehive throttled us, was down or slow: retried for as long as it takes, never made dead.
            delay, source = self._uncounted_delay(claim, exc)
            why = f"not counted as an attempt: {reason}; retry in {delay:.0f} s{source}"
            error = f"{type(exc).__name__}: {exc} ({why})"
            status = self.inbox.fail(
                claim, error, traceback.format_exc(), now + delay, now, count_attempt=False
            )
            if status is not None:
                self._count(status, claim.event)
            if status == "failed":
                log.warning(
                    "webhook deferred %s retry_in=%.1fs not counted (%s) error=%s",
                    where,
                    delay,
                    reason,
                    _loggable(exc, claim.event),
                )
            else:
                log.warning("webhook lease lost %s: another worker took it over", where)
            return
        self._forget_uncounted(claim)
        retry_at = None
        if claim.attempts < settings.webhook_max_attempts:
            delay = retry_delay(
                claim.attempts, settings.webhook_retry_first_seconds, settings.webhook_retry_max_seconds
            )
            retry_at = now + delay
        error = f"{type(exc).__name__}: {exc}"
        status = self.inbox.fail(claim, error, traceback.format_exc(), retry_at, now)
        if status is not None:
            self._count(status, claim.event)
        if status == "failed":
            log.warning(
                "webhook failed %s attempt=%d/%d retry_in=%.1fs error=%s",
                where,
                claim.attempts,
                settings.webhook_max_attempts,
                retry_at - now,
                _loggable(exc, claim.event),
            )
        elif status == "dead":
            log.error(
                "webhook dead %s attempts=%d error=%s", where, claim.attempts, _loggable(exc, claim.event)
            )
        else:
            log.warning("webhook lease lost %s: another worker took it over", where)

    # -- metrics (event names are labels only when a handler is registered for them by name) ---------

    def _count(self, outcome: str, event: str) -> None:
        metrics.EVENTS_FINISHED.labels(outcome, metrics.event_label(event, self.registry.has_named)).inc()

    def _observe(self, event: str, started: float) -> None:
        label = metrics.event_label(event, self.registry.has_named)
        metrics.HANDLER_SECONDS.labels(label).observe(time.monotonic() - started)

    def _uncounted_delay(self, claim: Claim, exc: Exception) -> tuple[float, str]:
        """Return the wait before retrying after an uncounted failure, and where it came from.

        Rehive's Retry-After when it gave one (at least 1 s, at most WEBHOOK_RETRY_MAX_SECONDS); else the
        usual backoff, grown by this event's consecutive uncounted failures in this process (the
        attempts counter no longer grows with them).
        """
        settings = self.settings
        key = (claim.company, claim.id)
        with self._running_lock:
            streak = self._uncounted[key] = self._uncounted.pop(key, 0) + 1
            if len(self._uncounted) > MAX_TRACKED_UNCOUNTED:  # events another process finished
                del self._uncounted[next(iter(self._uncounted))]
        asked = retry_after_seconds(exc)
        if asked is not None:
            return min(max(asked, 1.0), settings.webhook_retry_max_seconds), " as Rehive asked"
        return retry_delay(
            streak, settings.webhook_retry_first_seconds, settings.webhook_retry_max_seconds
        ), ""

    def _forget_uncounted(self, claim: Claim) -> None:
        with self._running_lock:
            self._uncounted.pop((claim.company, claim.id), None)

    def prune_if_due(self) -> int:
        """Delete done rows older than WEBHOOK_RETENTION_DAYS, if no process did in the last hour."""
        if not self._retention_lock.acquire(blocking=False):
            return 0
        try:
            if time.monotonic() < self._next_retention_check:
                return 0
            self._next_retention_check = time.monotonic() + RETENTION_CHECK_SECONDS
            now = self.clock()
            if not self.inbox.acquire_periodic("prune_done", RETENTION_EVERY_SECONDS, now):
                return 0
            deleted = self.inbox.prune_done(now - self.settings.webhook_retention_days * 86_400)
            if deleted:
                log.info(
                    "webhook retention deleted=%d done events older than %g days",
                    deleted,
                    self.settings.webhook_retention_days,
                )
            return deleted
        finally:
            self._retention_lock.release()

    # -- threads -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads (daemons; stopped at interpreter exit)."""
        if self.running:
            return
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._loop, name=f"webhooks-worker-{n}", daemon=True)
            for n in range(self.threads)
        ]
        self._threads.append(threading.Thread(target=self._renew_leases, name="webhooks-lease", daemon=True))
        for thread in self._threads:
            thread.start()
        atexit.register(self.stop)
        log.info("webhook workers started threads=%d", self.threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the threads to stop after their current event, and wait up to `timeout` seconds."""
        atexit.unregister(self.stop)
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of the events our threads are running."""
        lease = self.settings.webhook_lease_seconds
        try:
            while not self._stopping.wait(lease / 3):
                with self._running_lock:
                    running = list(self._running.values())
                for claim, started in running:
                    if time.monotonic() - started < lease * MAX_RENEWED_LEASES:
                        try:
                            self.inbox.renew(claim, lease, self.clock())
                        except Exception:  # a busy database: the next round tries again
                            log.exception("webhook lease renewal failed")
        finally:
            self.inbox.close()

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                # Note the wake-ups before looking, so one that arrives while we look is not lost.
                with self._wake:
                    seen = self._wakeups
                try:
                    busy = self.process_one()
                except Exception:  # a locked or broken database must not kill the thread
                    log.exception("webhook worker error; trying again in %.1fs", self.poll_seconds)
                    busy = False
                try:  # busy or not (a service that is never idle must prune too); a no-op most rounds
                    self.prune_if_due()
                except Exception:  # retention can wait for the next round
                    log.exception("webhook retention failed")
                if not busy:
                    with self._wake:
                        if self._wakeups == seen and not self._stopping.is_set():
                            self._wake.wait(self.poll_seconds)
        finally:
            self.inbox.close()
