"""The inbox: a SQLite table where each delivery is stored once and moves through its states.

received -> processing (leased) -> done, or -> failed (retried later) -> ... -> dead.
`due_at` says when a row may next be claimed: a received row at once, a failed row at its next
try, a processing row when its lease runs out (its worker is presumed dead); done/dead: never.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("received", "processing", "done", "failed", "dead")
REPLAYABLE = ("failed", "dead", "done")
BUSY_TIMEOUT_SECONDS = 4.0  # under Rehive's 5 s cut-off, so a locked database still answers
MAX_ERROR_CHARS = 1_000
MAX_TRACEBACK_CHARS = 20_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    company     TEXT NOT NULL,
    id          TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'received'
                CHECK (status IN ('received', 'processing', 'done', 'failed', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      REAL,
    lease_token TEXT,
    last_error  TEXT,
    traceback   TEXT,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    done_at     REAL,
    UNIQUE (company, id)
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_events_status ON webhook_events (status, seq);
"""


@dataclass(frozen=True)
class Claim:
    """A row this worker holds the lease on; only the holder of `lease_token` may settle it."""

    seq: int
    company: str
    id: str
    event: str
    body: str
    attempts: int
    lease_token: str


def _close_all(connections: list[sqlite3.Connection], lock_files: list[int]) -> None:
    for conn in connections:
        conn.close()
    for fd in lock_files:
        os.close(fd)


@dataclass
class _Queued:
    """An insert waiting for the next group commit; `stored` or `error` once it is settled."""

    values: tuple[Any, ...]
    stored: bool | None = None
    error: BaseException | None = None


class Inbox:
    """The webhook_events table in one SQLite file, with one connection per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Writers wait in line for one another (see _writing) instead of in SQLite's busy handler.
        self._thread_lock = threading.Lock()
        self._lock_files: list[int] = []
        self._lock_pid: int | None = None
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        # Close what is left when the inbox goes away (Python 3.13 warns about unclosed databases);
        # not at interpreter exit, where a daemon worker may still be using its connection.
        finalizer = weakref.finalize(self, _close_all, self._open, self._lock_files)
        finalizer.atexit = False

    def __repr__(self) -> str:
        return f"<Inbox {self.path}>"

    def connection(self, durable: bool = True) -> sqlite3.Connection:
        """Return this thread's connection (sqlite3 connections must stay in their thread).

        `durable`: each commit is fsync'd before it returns (synchronous=FULL), as storing a delivery
        must be before we answer 202. The workers' bookkeeping (claims, leases, done, failed) is not:
        it is committed without waiting for the disk (NORMAL), which survives any crash of ours; only
        a power cut can undo some of it, and then an event runs again (its handlers are idempotent),
        never goes missing. Waiting for the disk three times per event halved how fast we acknowledge.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
            # check_same_thread=False only so the finalizer may close it; each thread uses its own.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
            self._local.durable = None
            with self._lock:
                self._open.append(conn)
        if self._local.durable != durable:
            conn.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
            self._local.durable = durable
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                self._open.remove(conn)
            conn.close()

    def create_schema(self) -> None:
        """Create the database file, its folder and the table if they do not exist."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = self.connection()
        with self._write(conn):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the inbox's write lock: first among this process's threads, then among processes."""
        with self._thread_lock, self._file_lock():
            yield

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        # Writers of all processes wait in line on flock, which the kernel hands over the moment it
        # is free. SQLite's own busy handler instead sleeps 1, 2, 5, 10 ... 100 ms between tries
        # and lets newcomers overtake, which under a burst of deliveries held some for seconds.
        # flock belongs to the open file, which a fork shares: each process opens its own.
        if self._lock_pid != os.getpid():
            self._lock_files.append(os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600))
            self._lock_pid = os.getpid()
        fd = self._lock_files[-1]
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        with self._writing(), self._transaction(conn):
            yield conn

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so two processes cannot both read a row as
        # claimable and then both update it.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # some errors have already rolled it back
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- receiving ---------------------------------------------------------------------------

    def insert(self, company: str, event_id: str, event: str, body: str, now: float | None = None) -> bool:
        """Store a delivery; return False if (company, id) was already stored (nothing changes).

        Deliveries that arrive together are committed together, in one transaction and one fsync
        (group commit): whichever thread gets the write lock first stores everything queued by then.
        """
        now = time.time() if now is None else now
        queued = _Queued((company, event_id, event, body, now, now, now))
        with self._queue_lock:
            self._queue.append(queued)
        with self._thread_lock:
            if queued.stored is None and queued.error is None:  # no other thread committed it yet
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if queued.error is not None:
            raise queued.error
        assert queued.stored is not None
        return queued.stored

    def _commit(self, batch: list[_Queued]) -> None:
        """Store `batch` in one transaction and settle every item of it, stored or failed."""
        try:
            conn = self.connection()
            with self._file_lock(), self._transaction(conn):
                stored = [
                    conn.execute(
                        "INSERT INTO webhook_events (company, id, event, body, due_at, received_at,"
                        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (company, id) DO NOTHING",
                        item.values,
                    ).rowcount
                    == 1
                    for item in batch
                ]
        except BaseException as exc:  # nothing of the batch is stored: every waiter gets the error
            for item in batch:
                item.error = exc
            return
        for item, was_stored in zip(batch, stored, strict=True):
            item.stored = was_stored

    # -- processing --------------------------------------------------------------------------

    def has_due(self, now: float | None = None) -> bool:
        """Tell, without taking the write lock, whether any row may be claimed now."""
        now = time.time() if now is None else now
        row = self.connection(durable=False).execute(
            "SELECT 1 FROM webhook_events WHERE due_at <= ? LIMIT 1", (now,)
        )
        return row.fetchone() is not None

    def bury_expired(self, max_attempts: int, now: float | None = None) -> list[sqlite3.Row]:
        """Mark dead the rows whose lease ran out on their last allowed attempt; return them."""
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        # Look before taking the write lock: a lease rarely runs out, and this runs before every claim.
        expired = conn.execute(
            "SELECT 1 FROM webhook_events WHERE status = 'processing' AND due_at <= ? AND attempts >= ?"
            " LIMIT 1",
            (now, max_attempts),
        ).fetchone()
        if expired is None:
            return []
        with self._write(conn):
            return conn.execute(
                "UPDATE webhook_events SET status = 'dead', due_at = NULL, lease_token = NULL,"
                " last_error = 'lease expired on the last attempt (did the worker die?)', updated_at = ?"
                " WHERE status = 'processing' AND due_at <= ? AND attempts >= ?"
                " RETURNING company, id, event, attempts",
                (now, now, max_attempts),
            ).fetchall()

    def claim_next(self, lease_seconds: float, now: float | None = None) -> Claim | None:
        """Lease the oldest due row to the caller and count an attempt; None if nothing is due."""
        now = time.time() if now is None else now
        token = uuid.uuid4().hex
        conn = self.connection(durable=False)
        with self._write(conn):
            row = conn.execute(
                "UPDATE webhook_events SET status = 'processing', attempts = attempts + 1,"
                " lease_token = ?, due_at = ?, updated_at = ?"
                " WHERE seq = (SELECT seq FROM webhook_events WHERE due_at <= ? ORDER BY due_at, seq LIMIT 1)"
                " RETURNING seq, company, id, event, body, attempts",
                (token, now + lease_seconds, now, now),
            ).fetchone()
        if row is None:
            return None
        return Claim(lease_token=token, **dict(row))

    def renew(self, claim: Claim, lease_seconds: float, now: float | None = None) -> bool:
        """Extend the claim's lease from now; False if it was already lost to another worker."""
        now = time.time() if now is None else now
        cursor = self.connection(durable=False).execute(
            "UPDATE webhook_events SET due_at = ?, updated_at = ?"
            " WHERE seq = ? AND status = 'processing' AND lease_token = ?",
            (now + lease_seconds, now, claim.seq, claim.lease_token),
        )
        return cursor.rowcount == 1

    def finish(self, claim: Claim, now: float | None = None) -> bool:
        """Mark the claimed row done; False if the lease was lost to another worker meanwhile."""
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._writing():
            cursor = conn.execute(
                "UPDATE webhook_events SET status = 'done', due_at = NULL, lease_token = NULL,"
                " done_at = ?, updated_at = ? WHERE seq = ? AND status = 'processing' AND lease_token = ?",
                (now, now, claim.seq, claim.lease_token),
            )
        return cursor.rowcount == 1

    def fail(
        self,
        claim: Claim,
        error: str,
        traceback: str,
        retry_at: float | None,
        now: float | None = None,
        *,
        count_attempt: bool = True,
    ) -> str | None:
        """Record a failed attempt: `failed` until `retry_at`, or `dead` if it is None.

        With `count_attempt=False` (Rehive throttled us, was down or slow: not the event's fault) the
        attempt is given back, so such failures never bring the event closer to `dead`.
        Return the new status, or None if the lease was lost to another worker meanwhile.
        """
        now = time.time() if now is None else now
        if not count_attempt and retry_at is None:
            raise ValueError("an attempt that is not counted must be retried")
        status = "dead" if retry_at is None else "failed"
        given_back = 0 if count_attempt else 1
        conn = self.connection(durable=False)
        with self._writing():
            cursor = conn.execute(
                "UPDATE webhook_events SET status = ?, attempts = attempts - ?, due_at = ?,"
                " lease_token = NULL, last_error = ?, traceback = ?, updated_at = ?"
                " WHERE seq = ? AND status = 'processing' AND lease_token = ?",
                (
                    status,
                    given_back,
                    retry_at,
                    error[:MAX_ERROR_CHARS],
                    traceback[-MAX_TRACEBACK_CHARS:],
                    now,
                    claim.seq,
                    claim.lease_token,
                ),
            )
        return status if cursor.rowcount == 1 else None

    # -- operating ---------------------------------------------------------------------------

    def replay(self, company: str, event_id: str, now: float | None = None) -> str | None:
        """Put a failed/dead/done event back to received with no attempts; return its old status.

        Return None if there is no such event; a received or processing event is left alone
        (its old status is returned, so the caller can tell it was not replayed).
        """
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            row = conn.execute(
                "SELECT status FROM webhook_events WHERE company = ? AND id = ?", (company, event_id)
            ).fetchone()
            if row is None:
                return None
            if row["status"] in REPLAYABLE:
                conn.execute(
                    "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = ?,"
                    " lease_token = NULL, updated_at = ? WHERE company = ? AND id = ?",
                    (now, now, company, event_id),
                )
            return row["status"]

    def replay_dead(self, now: float | None = None) -> list[sqlite3.Row]:
        """Put every dead event back to received with no attempts; return (company, id, event)s."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return conn.execute(
                "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = ?,"
                " lease_token = NULL, updated_at = ? WHERE status = 'dead' RETURNING company, id, event",
                (now, now),
            ).fetchall()

    def list_events(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return rows without their body, newest first, optionally of one status."""
        sql = (
            "SELECT company, id, event, status, attempts, received_at, updated_at, done_at, due_at,"
            " last_error FROM webhook_events"
        )
        params: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [dict(row) for row in self.connection().execute(sql, params)]

    def get(self, event_id: str, company: str | None = None) -> list[dict[str, Any]]:
        """Return every full row with this id (one per company, or only `company`'s)."""
        sql = "SELECT * FROM webhook_events WHERE id = ?"
        params: list[Any] = [event_id]
        if company is not None:
            sql += " AND company = ?"
            params.append(company)
        return [dict(row) for row in self.connection().execute(sql + " ORDER BY company", params)]

    def counts(self) -> dict[str, int]:
        """Return how many rows are in each status."""
        rows = self.connection().execute("SELECT status, count(*) AS n FROM webhook_events GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    # -- operations (metrics, readiness, periodic jobs) -------------------------------------------
    # The same three methods on every backend; the tables they need are created on first use.

    def oldest_unfinished(self) -> float | None:
        """Return received_at of the oldest event not yet done or dead, or None if there is none."""
        sql = (
            "SELECT min(received_at) FROM webhook_events WHERE status IN ('received', 'processing', 'failed')"
        )
        return self.connection(durable=False).execute(sql).fetchone()[0]

    def probe_write(self) -> None:
        """Make one small real write (the one-row store_health table); raise if the store refuses it."""
        conn = self.connection(durable=False)
        with self._write(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS store_health (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " checked_at REAL NOT NULL)"
            )
            conn.execute(
                "INSERT INTO store_health (id, checked_at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (time.time(),),
            )

    def acquire_periodic(self, name: str, every_seconds: float, now: float | None = None) -> bool:
        """Claim the right to run job `name` now if its last run began over `every_seconds` ago.

        One statement decides, so of several processes asking at once exactly one gets True.
        """
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._write(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS periodic_runs (name TEXT PRIMARY KEY, last_run_at REAL NOT NULL)"
            )
            cursor = conn.execute(
                "INSERT INTO periodic_runs (name, last_run_at) VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET last_run_at = excluded.last_run_at WHERE periodic_runs.last_run_at <= ?",
                (name, now, now - every_seconds),
            )
        return cursor.rowcount == 1

    # -- the manage page (issue 12) ----------------------------------------------------------
    # Every method here takes the company and filters by it: the page shows one company's rows.
    # Plain SQL that PostgreSQL runs as well (with %s for ?), to port into the two-backend store.

    def create_manage_schema(self) -> None:
        """Create the company_settings table (per-company settings edited on the manage page)."""
        conn = self.connection()
        with self._write(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS company_settings ("
                " company TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,"
                " updated_at REAL NOT NULL, PRIMARY KEY (company, name))"
            )

    def page_of(
        self, company: str, status: str | None, event: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """Return how many of the company's rows match, and `limit` of them from `offset`, newest first."""
        # Fixed fragments only; every value is a parameter.
        filters, params = "", [company]
        if status:
            filters += " AND status = ?"
            params.append(status)
        if event:
            filters += " AND event = ?"
            params.append(event)
        count_sql = "SELECT count(*) FROM webhook_events WHERE company = ?"
        count_sql += filters
        page_sql = "SELECT id, event, status, attempts, received_at, updated_at, last_error"
        page_sql += " FROM webhook_events WHERE company = ?" + filters + " ORDER BY seq DESC LIMIT ? OFFSET ?"
        conn = self.connection()
        count = conn.execute(count_sql, params).fetchone()[0]
        rows = conn.execute(page_sql, [*params, limit, offset])
        return count, [dict(row) for row in rows]

    def counts_of(self, company: str) -> dict[str, int]:
        """Return how many of the company's rows are in each status."""
        rows = self.connection().execute(
            "SELECT status, count(*) AS n FROM webhook_events WHERE company = ? GROUP BY status", (company,)
        )
        return {row["status"]: row["n"] for row in rows}

    def replay_dead_of(self, company: str, now: float | None = None) -> int:
        """Put every dead event of the company back to received with no attempts; return how many."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return conn.execute(
                "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = ?,"
                " lease_token = NULL, updated_at = ? WHERE company = ? AND status = 'dead'",
                (now, now, company),
            ).rowcount

    def company_setting(self, company: str, name: str) -> Any:
        """Return the company's setting `name` (JSON-decoded), or None when it was never set."""
        row = (
            self.connection()
            .execute("SELECT value FROM company_settings WHERE company = ? AND name = ?", (company, name))
            .fetchone()
        )
        return None if row is None else json.loads(row["value"])

    def set_company_setting(self, company: str, name: str, value: Any, now: float | None = None) -> None:
        """Store the company's setting `name` (as JSON), replacing any earlier value."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            conn.execute(
                "INSERT INTO company_settings (company, name, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (company, name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (company, name, json.dumps(value), now),
            )
