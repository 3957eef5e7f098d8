"""Deliver webhooks as Rehive does: POST from background threads, retry failures with the same id."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import requests

from local_rehive.model import now_ms

log = logging.getLogger("local_rehive.webhooks")

USER_AGENT = "rehive-platform/3.0-local"
SUCCESS = frozenset({200, 201, 202})
LOG_SIZE = 10_000


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook: the same `body` (and envelope id) goes out on every attempt."""

    webhook_id: int
    url: str
    secret: str
    event: str
    envelope_id: str
    transaction: str
    body: bytes


@dataclass(frozen=True)
class Attempt:
    """One POST of a delivery, as Rehive's `GET /3/admin/webhook-tasks/{id}/requests/` lists it."""

    id: int
    response_code: int | None
    error: str | None
    created: int


@dataclass
class Task:
    """A delivery's history, as Rehive's webhook-tasks show it; its id is the envelope id."""

    id: str
    webhook_id: int
    body: bytes
    created: int
    updated: int
    tries: int = 0
    completed: int | None = None
    failed: int | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def data(self) -> object:
        """Return the `data` of the delivered envelope (the payload the detail view adds)."""
        return json.loads(self.body)["data"]


@dataclass(frozen=True)
class _Job:
    due: float
    order: int
    attempt: int
    delivery: Delivery


class Courier:
    """A small pool of threads that POSTs deliveries; one URL receives one request at a time."""

    def __init__(
        self, retry_delays: Callable[[], Sequence[float]], *, timeout: float = 5.0, workers: int = 4
    ) -> None:
        self._retry_delays = retry_delays
        self._timeout = timeout
        self._workers = workers
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._busy: set[str] = set()  # URLs with a request in flight: one URL gets events in order
        self._threads: list[threading.Thread] = []
        self._log: deque[dict] = deque(maxlen=LOG_SIZE)
        self._tasks: OrderedDict[str, Task] = OrderedDict()  # the newest LOG_SIZE deliveries
        self._attempt_ids = itertools.count(1)
        self._order = 0
        self._closed = False

    def send(self, delivery: Delivery) -> None:
        """Queue the first attempt of `delivery`; it goes out from a background thread."""
        with self._cond:
            if self._closed:
                return
            now = now_ms()
            self._tasks[delivery.envelope_id] = Task(
                delivery.envelope_id, delivery.webhook_id, delivery.body, now, now
            )
            while len(self._tasks) > LOG_SIZE:
                self._tasks.popitem(last=False)
            self._queue(delivery, attempt=1, delay=0.0)
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name="local-rehive-webhooks", daemon=True)
                self._threads.append(thread)
                thread.start()

    def attempts(self) -> list[dict]:
        """Return the log of every attempt so far, oldest first."""
        with self._cond:
            return list(self._log)

    def tasks(self) -> list[Task]:
        """Return a snapshot of every delivery's task, oldest first."""
        with self._cond:
            return [replace(task, attempts=list(task.attempts)) for task in self._tasks.values()]

    def close(self, timeout: float = 6.0) -> None:
        """Drop queued attempts and wait (up to `timeout` s) for requests in flight."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _queue(self, delivery: Delivery, *, attempt: int, delay: float) -> None:
        self._order += 1
        self._jobs.append(_Job(time.monotonic() + delay, self._order, attempt, delivery))
        self._cond.notify_all()

    def _work(self) -> None:
        with requests.Session() as session:
            session.trust_env = False  # deliver straight to the URL, as the platform does
            while (job := self._next_job()) is not None:
                status, error = self._post(session, job.delivery)
                self._finish(job, status, error)

    def _next_job(self) -> _Job | None:
        """Wait for the earliest due job whose URL is idle; None once closed."""
        with self._cond:
            while not self._closed:
                ready = sorted(
                    (job for job in self._jobs if job.delivery.url not in self._busy),
                    key=lambda job: (job.due, job.order),
                )
                wait = ready[0].due - time.monotonic() if ready else None
                if wait is not None and wait <= 0:
                    self._jobs.remove(ready[0])
                    self._busy.add(ready[0].delivery.url)
                    return ready[0]
                self._cond.wait(wait)
            return None

    def _post(self, session: requests.Session, delivery: Delivery) -> tuple[int | None, str | None]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if delivery.secret:
            headers["Authorization"] = f"Secret {delivery.secret}"
        try:
            with session.post(
                delivery.url,
                data=delivery.body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                return response.status_code, None
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _finish(self, job: _Job, status: int | None, error: str | None) -> None:
        delivery = job.delivery
        ok = status in SUCCESS
        with self._cond:
            self._busy.discard(delivery.url)
            self._log.append(
                {
                    "webhook": delivery.webhook_id,
                    "url": delivery.url,
                    "event": delivery.event,
                    "id": delivery.envelope_id,
                    "transaction": delivery.transaction,
                    "attempt": job.attempt,
                    "status": status,
                    "error": error,
                    "ok": ok,
                    "at": now_ms(),
                }
            )
            delays = list(self._retry_delays())
            retried = not ok and not self._closed and job.attempt <= len(delays)
            if retried:
                self._queue(delivery, attempt=job.attempt + 1, delay=delays[job.attempt - 1])
            self._record(delivery.envelope_id, status, error, ok, gave_up=not ok and not retried)
            self._cond.notify_all()
        if not ok:  # never the secret: only the webhook's id, the event and what went wrong
            log.warning(
                "webhook %s %s attempt %d failed: %s",
                delivery.webhook_id,
                delivery.event,
                job.attempt,
                error or status,
            )

    def _record(self, task_id: str, status: int | None, error: str | None, ok: bool, gave_up: bool) -> None:
        """Add an attempt to the delivery's task (caller holds the lock); mark it completed or failed."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        now = now_ms()
        task.tries += 1
        task.updated = now
        task.attempts.append(Attempt(next(self._attempt_ids), status, error, now))
        if ok:
            task.completed = now
        elif gave_up:
            task.failed = now
