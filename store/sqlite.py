"""The SQLite backend: the inbox in one file on this host, for `make run` and single-server deployments.

received -> processing (leased) -> done, or -> failed (retried later) -> ... -> dead.
`due_at` says when a row may next be claimed: a received row at once, a failed row at its next
try, a processing row when its lease runs out (its worker is presumed dead); done/dead: never.

Writers queue on a lock, first among this process's threads, then among processes (flock on
`<file>.lock`); a wait for it inside a request gives up after REQUEST_WAIT_SECONDS in all.
The folder is created 0700 and every file of the database 0600, whatever the umask: the payloads
hold one-time codes and reset keys, and a shared lock on `-shm` taken by another account would stop
every write.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from store import (
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    PRUNE_BATCH,
    REGISTRATION_COLUMNS,
    REPLAYABLE,
    REQUEST_WAIT_SECONDS,
    TOKEN_INVALID,
    Claim,
    StoreUnavailable,
    migrations,
    registration_row,
    scope,
    split_statements,
)

log = logging.getLogger("webhooks")

BUSY_TIMEOUT_SECONDS = REQUEST_WAIT_SECONDS
WORKER_WAIT_SECONDS = 30.0  # the workers' bookkeeping may wait longer: no one is waiting on an answer
UPGRADE_WAIT_SECONDS = 120.0  # another process may be creating or upgrading the schema
FILE_MODE = 0o600
FOLDER_MODE = 0o700
SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")
EXPORT_COLUMNS = (
    "seq, company, id, event, body, status, attempts, due_at, lease_token, last_error, traceback,"
    " received_at, updated_at, done_at"
)

FINISH = (
    "UPDATE webhook_events SET status = 'done', due_at = NULL, lease_token = NULL,"
    " done_at = ?, updated_at = ? WHERE seq = ? AND status = 'processing' AND lease_token = ?"
)

P = ParamSpec("P")
R = TypeVar("R")


def _due_scope(company: str | None, registered: bool) -> tuple[str, tuple[Any, ...]]:
    """Return store.scope's fragment with the company column kept away from SQLite's planner.

    Given `company = ?`, SQLite prefers the (company, status, seq) index and walks every row the
    company ever had, done ones included: each claim then costs more as history grows. `+company`
    is the documented way to rule that index out, so the partial index on due_at, which holds only
    the rows that may still be claimed, is used instead.
    """
    where, params = scope(company, registered)
    return where.replace(" AND company ", " AND +company "), params


def _unavailable(method: Callable[P, R]) -> Callable[P, R]:
    """Report a failure of the database or its files as StoreUnavailable (the callers' one error)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


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
    settled: threading.Event = field(default_factory=threading.Event)


class SqliteStore:
    """The store in one SQLite file, with one connection per thread."""

    backend = "sqlite"

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
        # Close what is left when the store goes away (Python 3.13 warns about unclosed databases);
        # not at interpreter exit, where a daemon worker may still be using its connection.
        finalizer = weakref.finalize(self, _close_all, self._open, self._lock_files)
        finalizer.atexit = False

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    # -- files -------------------------------------------------------------------------------

    def _create_private(self, path: str) -> int:
        """Open (creating if missing) `path` readable by us alone, whatever the umask."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        return fd

    def _secure_files(self) -> None:
        """Create the folder 0700 if missing; tighten any database file others may read or write."""
        folder = Path(self.path).parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, FOLDER_MODE)
        for suffix in SUFFIXES:
            name = self.path + suffix
            try:
                mode = stat.S_IMODE(os.stat(name).st_mode)
            except FileNotFoundError:
                continue
            if mode & 0o077:
                os.chmod(name, FILE_MODE)
                log.warning("store file %s was mode %o (readable by others); tightened to 0600", name, mode)

    # -- connections -------------------------------------------------------------------------

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
            if not os.path.exists(self.path):
                # SQLite would create it 0644 (less the umask); its -wal and -shm copy its mode.
                os.close(self._create_private(self.path))
            # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
            # check_same_thread=False only so the finalizer may close it; each thread uses its own.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
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

    def shutdown(self) -> None:
        """Close this thread's connection (other threads close their own when they end)."""
        self.close()

    def listen(self, wake: Callable[[], None]) -> None:
        """Nothing to listen to: a delivery wakes its own process; other processes poll."""

    # -- schema ------------------------------------------------------------------------------

    @_unavailable
    def schema_version(self) -> int:
        """Return the schema version applied (0: an empty file, or one made before versions)."""
        conn = self.connection()
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            return 0
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    @_unavailable
    def upgrade(self) -> tuple[int, int]:
        """Create or upgrade the schema under the lock file; return (version before, version after)."""
        self._secure_files()
        with self._writing(UPGRADE_WAIT_SECONDS):
            conn = self.connection()
            # WAL is a property of the file: set once, here, while no one else may be writing.
            conn.execute("PRAGMA journal_mode=WAL")
            before = self.schema_version()
            for version, name, sql in migrations(self.backend):
                if version <= before:
                    continue
                with self._transaction(conn):
                    for statement in split_statements(sql):
                        conn.execute(statement)
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations"
                        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                    )
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )
                log.info("store schema upgraded to %s (%s)", version, name)
            after = self.schema_version()
        self._secure_files()
        return before, after

    def create_schema(self) -> None:
        """Create or upgrade the schema (the name earlier releases used)."""
        self.upgrade()

    # -- locking -----------------------------------------------------------------------------

    @contextmanager
    def _writing(self, wait: float = REQUEST_WAIT_SECONDS) -> Iterator[None]:
        """Hold the store's write lock: first among this process's threads, then among processes.

        Gives up with StoreUnavailable when both waits together take longer than `wait` seconds.
        """
        deadline = time.monotonic() + wait
        if not self._thread_lock.acquire(timeout=wait):
            raise StoreUnavailable(f"the store's write lock was busy for {wait:.0f} s (this process)")
        try:
            with self._file_lock(deadline):
                yield
        finally:
            self._thread_lock.release()

    @contextmanager
    def _file_lock(self, deadline: float) -> Iterator[None]:
        # Writers of all processes wait in line on flock. A blocking flock cannot time out, so a
        # writer that finds it taken tries again every millisecond or two until its deadline: a
        # suspended `flask webhooks replay` holding the lock must not leave a delivery unanswered.
        # flock belongs to the open file, which a fork shares: each process opens its own.
        if self._lock_pid != os.getpid():
            self._lock_files.append(self._create_private(f"{self.path}.lock"))
            self._lock_pid = os.getpid()
        fd = self._lock_files[-1]
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable("the store's lock file is held by another process") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _write(self, conn: sqlite3.Connection, wait: float = REQUEST_WAIT_SECONDS) -> Iterator[None]:
        with self._writing(wait), self._transaction(conn):
            yield

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
        Raise StoreUnavailable, with nothing stored, if that takes longer than REQUEST_WAIT_SECONDS.
        """
        now = time.time() if now is None else now
        deadline = time.monotonic() + REQUEST_WAIT_SECONDS
        queued = _Queued((company, event_id, event, body, now, now, now))
        with self._queue_lock:
            self._queue.append(queued)
        if self._thread_lock.acquire(timeout=REQUEST_WAIT_SECONDS):
            try:
                if not queued.settled.is_set():  # no other thread committed it yet
                    with self._queue_lock:
                        batch, self._queue = self._queue, []
                    self._commit(batch, deadline)
            finally:
                self._thread_lock.release()
        else:
            with self._queue_lock:
                waiting = queued in self._queue
                if waiting:  # no one took it: withdraw it, so that nothing is stored after the 503
                    self._queue.remove(queued)
            if waiting:
                raise StoreUnavailable("the store's write lock was busy (this process)")
            queued.settled.wait()  # taken by a commit under way, which settles within its own deadline
        if queued.error is not None:
            if isinstance(queued.error, StoreUnavailable):
                raise queued.error
            raise StoreUnavailable(f"{type(queued.error).__name__}: {queued.error}") from queued.error
        assert queued.stored is not None
        return queued.stored

    def _commit(self, batch: list[_Queued], deadline: float) -> None:
        """Store `batch` in one transaction and settle every item of it, stored or failed."""
        try:
            conn = self.connection()
            with self._file_lock(deadline):
                left_ms = max(1, int((deadline - time.monotonic()) * 1000))
                conn.execute(f"PRAGMA busy_timeout = {left_ms}")
                with self._transaction(conn):
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
                item.settled.set()
            return
        for item, was_stored in zip(batch, stored, strict=True):
            item.stored = was_stored
            item.settled.set()

    # -- processing --------------------------------------------------------------------------

    @_unavailable
    def has_due(
        self, now: float | None = None, *, company: str | None = None, registered: bool = False
    ) -> bool:
        """Tell, without taking the write lock, whether any row (of the scope) may be claimed now."""
        now = time.time() if now is None else now
        where, params = _due_scope(company, registered)
        row = self.connection(durable=False).execute(
            f"SELECT 1 FROM webhook_events WHERE due_at <= ?{where} LIMIT 1",  # noqa: S608
            (now, *params),
        )
        return row.fetchone() is not None

    @_unavailable
    def bury_expired(self, max_attempts: int, now: float | None = None) -> list[dict[str, Any]]:
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
        with self._write(conn, WORKER_WAIT_SECONDS):
            rows = conn.execute(
                "UPDATE webhook_events SET status = 'dead', due_at = NULL, lease_token = NULL,"
                " last_error = 'lease expired on the last attempt (did the worker die?)', updated_at = ?"
                " WHERE status = 'processing' AND due_at <= ? AND attempts >= ?"
                " RETURNING company, id, event, attempts",
                (now, now, max_attempts),
            ).fetchall()
        return [dict(row) for row in rows]

    @_unavailable
    def claim_next(
        self,
        lease_seconds: float,
        now: float | None = None,
        *,
        company: str | None = None,
        registered: bool = False,
    ) -> Claim | None:
        """Lease the oldest due row (of the scope, see store.scope) and count an attempt; None if none."""
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._write(conn, WORKER_WAIT_SECONDS):
            return self._claim(conn, lease_seconds, now, company, registered)

    @_unavailable
    def finish_and_claim(
        self,
        claim: Claim,
        lease_seconds: float,
        now: float | None = None,
        *,
        company: str | None = None,
        registered: bool = False,
    ) -> tuple[bool, Claim | None]:
        """Mark `claim` done and lease the next due row in one transaction; return (finished, next).

        A busy worker's two writes per event become one: one turn of the write lock, which deliveries
        being acknowledged wait for, and one commit.
        """
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._write(conn, WORKER_WAIT_SECONDS):
            finished = conn.execute(FINISH, (now, now, claim.seq, claim.lease_token)).rowcount == 1
            return finished, self._claim(conn, lease_seconds, now, company, registered)

    @staticmethod
    def _claim(
        conn: sqlite3.Connection, lease_seconds: float, now: float, company: str | None, registered: bool
    ) -> Claim | None:
        token = uuid.uuid4().hex
        where, params = _due_scope(company, registered)
        row = conn.execute(
            "UPDATE webhook_events SET status = 'processing', attempts = attempts + 1,"  # noqa: S608
            " lease_token = ?, due_at = ?, updated_at = ?"
            f" WHERE seq = (SELECT seq FROM webhook_events WHERE due_at <= ?{where}"
            " ORDER BY due_at, seq LIMIT 1)"
            " RETURNING seq, company, id, event, body, attempts",
            (token, now + lease_seconds, now, now, *params),
        ).fetchone()
        if row is None:
            return None
        return Claim(lease_token=token, **dict(row))

    @_unavailable
    def renew(self, claim: Claim, lease_seconds: float, now: float | None = None) -> bool:
        """Extend the claim's lease from now; False if it was already lost to another worker."""
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._writing(WORKER_WAIT_SECONDS):
            cursor = conn.execute(
                "UPDATE webhook_events SET due_at = ?, updated_at = ?"
                " WHERE seq = ? AND status = 'processing' AND lease_token = ?",
                (now + lease_seconds, now, claim.seq, claim.lease_token),
            )
        return cursor.rowcount == 1

    @_unavailable
    def finish(self, claim: Claim, now: float | None = None) -> bool:
        """Mark the claimed row done; False if the lease was lost to another worker meanwhile."""
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._writing(WORKER_WAIT_SECONDS):
            cursor = conn.execute(FINISH, (now, now, claim.seq, claim.lease_token))
        return cursor.rowcount == 1

    @_unavailable
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

        `count_attempt=False` gives the attempt back (Rehive throttled us or was down: not the
        event's fault). Return the new status, or None if the lease was lost meanwhile.
        """
        if retry_at is None and not count_attempt:
            raise ValueError("an attempt given back must be retried: pass retry_at")
        now = time.time() if now is None else now
        status = "dead" if retry_at is None else "failed"
        conn = self.connection(durable=False)
        with self._writing(WORKER_WAIT_SECONDS):
            cursor = conn.execute(
                "UPDATE webhook_events SET status = ?, due_at = ?, lease_token = NULL, last_error = ?,"
                " traceback = ?, updated_at = ?, attempts = max(attempts - ?, 0)"
                " WHERE seq = ? AND status = 'processing' AND lease_token = ?",
                (
                    status,
                    retry_at,
                    error[:MAX_ERROR_CHARS],
                    traceback[-MAX_TRACEBACK_CHARS:],
                    now,
                    0 if count_attempt else 1,
                    claim.seq,
                    claim.lease_token,
                ),
            )
        return status if cursor.rowcount == 1 else None

    # -- operating ---------------------------------------------------------------------------

    @_unavailable
    def replay(self, company: str, event_id: str, now: float | None = None) -> str | None:
        """Put a failed/dead/done event back to received with no attempts; return its old status.

        Return None if there is no such event; a received or processing event is left alone
        (its old status is returned, so the caller can tell it was not replayed).
        """
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
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

    @_unavailable
    def replay_dead(self, now: float | None = None) -> list[dict[str, Any]]:
        """Put every dead event back to received with no attempts; return (company, id, event)s."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
            rows = conn.execute(
                "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = ?,"
                " lease_token = NULL, updated_at = ? WHERE status = 'dead' RETURNING company, id, event",
                (now, now),
            ).fetchall()
        return [dict(row) for row in rows]

    @_unavailable
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

    @_unavailable
    def get(self, event_id: str, company: str | None = None) -> list[dict[str, Any]]:
        """Return every full row with this id (one per company, or only `company`'s)."""
        sql = "SELECT * FROM webhook_events WHERE id = ?"
        params: list[Any] = [event_id]
        if company is not None:
            sql += " AND company = ?"
            params.append(company)
        return [dict(row) for row in self.connection().execute(sql + " ORDER BY company", params)]

    @_unavailable
    def counts(self) -> dict[str, int]:
        """Return how many rows are in each status."""
        rows = self.connection().execute("SELECT status, count(*) AS n FROM webhook_events GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    # -- the manage page: one company's rows and settings --------------------------------------

    @_unavailable
    def page_of(
        self, company: str, status: str | None, event: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """Return how many of the company's rows match, and `limit` of them from `offset`, newest first."""
        # An empty filter matches everything: one fixed statement, every value a parameter.
        params = [company, status or "", status or "", event or "", event or ""]
        conn = self.connection()
        total = conn.execute(
            "SELECT count(*) FROM webhook_events"
            " WHERE company = ? AND (? = '' OR status = ?) AND (? = '' OR event = ?)",
            params,
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT id, event, status, attempts, received_at, updated_at, last_error FROM webhook_events"
            " WHERE company = ? AND (? = '' OR status = ?) AND (? = '' OR event = ?)"
            " ORDER BY seq DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return total, [dict(row) for row in rows]

    @_unavailable
    def counts_of(self, company: str) -> dict[str, int]:
        """Return how many of the company's rows are in each status."""
        rows = self.connection().execute(
            "SELECT status, count(*) AS n FROM webhook_events WHERE company = ? GROUP BY status", (company,)
        )
        return {row["status"]: row["n"] for row in rows}

    @_unavailable
    def replay_dead_of(self, company: str, now: float | None = None) -> int:
        """Put every dead event of the company back to received with no attempts; return how many."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
            return conn.execute(
                "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = ?,"
                " lease_token = NULL, updated_at = ? WHERE company = ? AND status = 'dead'",
                (now, now, company),
            ).rowcount

    @_unavailable
    def company_setting(self, company: str, name: str) -> Any:
        """Return the company's setting `name` (JSON-decoded), or None when it was never set."""
        row = (
            self.connection()
            .execute("SELECT value FROM company_settings WHERE company = ? AND name = ?", (company, name))
            .fetchone()
        )
        return None if row is None else json.loads(row["value"])

    @_unavailable
    def set_company_setting(self, company: str, name: str, value: Any, now: float | None = None) -> None:
        """Store the company's setting `name` (as JSON), replacing any earlier value."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
            conn.execute(
                "INSERT INTO company_settings (company, name, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (company, name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (company, name, json.dumps(value), now),
            )

    # -- company registrations (multi-company mode; every token and secret is a ciphertext) ----------

    @_unavailable
    def registration(self, company: str) -> dict[str, Any] | None:
        """Return the company's registration row, or None if it never activated (or was purged)."""
        row = (
            self.connection()
            .execute(
                f"SELECT {REGISTRATION_COLUMNS} FROM company_registrations WHERE company = ?",  # noqa: S608
                (company,),
            )
            .fetchone()
        )
        return None if row is None else registration_row(row)

    @_unavailable
    def registrations(self) -> list[dict[str, Any]]:
        """Return every registration row, by company."""
        rows = self.connection().execute(
            f"SELECT {REGISTRATION_COLUMNS} FROM company_registrations ORDER BY company"  # noqa: S608
        )
        return [registration_row(row) for row in rows]

    @_unavailable
    def activate_company(
        self,
        company: str,
        token: str,
        token_user: str,
        secret: str,
        events: list[str],
        now: float | None = None,
    ) -> bool:
        """Make the company active with this token; its secret is kept if it has one. True if new."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            known = conn.execute(
                "SELECT 1 FROM company_registrations WHERE company = ?", (company,)
            ).fetchone()
            conn.execute(
                "INSERT INTO company_registrations (company, active, token, token_user, secret, token_status,"
                " activated_at, webhook_events, updated_at) VALUES (?, 1, ?, ?, ?, 'ok', ?, ?, ?)"
                " ON CONFLICT (company) DO UPDATE SET active = 1, token = excluded.token,"
                " token_user = excluded.token_user, token_status = 'ok',"
                " activated_at = excluded.activated_at,"
                " deactivated_at = NULL, webhook_events = excluded.webhook_events,"
                " updated_at = excluded.updated_at",
                (company, token, token_user, secret, now, json.dumps(events), now),
            )
        return known is None

    @_unavailable
    def deactivate_company(self, company: str, now: float | None = None) -> bool:
        """Make the company inactive and forget its token; False if it never activated."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return (
                conn.execute(
                    "UPDATE company_registrations SET token = NULL,"
                    " deactivated_at = CASE WHEN active THEN ? ELSE deactivated_at END, active = 0,"
                    " updated_at = ? WHERE company = ?",
                    (now, now, company),
                ).rowcount
                == 1
            )

    @_unavailable
    def replace_token(self, company: str, token: str, token_user: str, now: float | None = None) -> bool:
        """Replace an active company's token (and clear token_invalid); False if it is not active."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return (
                conn.execute(
                    "UPDATE company_registrations SET token = ?, token_user = ?, token_status = 'ok',"
                    " updated_at = ? WHERE company = ? AND active",
                    (token, token_user, now, company),
                ).rowcount
                == 1
            )

    @_unavailable
    def mark_token_invalid(self, company: str, token: str, now: float | None = None) -> bool:
        """Mark the company's token refused, if `token` (a ciphertext) is still the stored one."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return (
                conn.execute(
                    "UPDATE company_registrations SET token_status = ?, updated_at = ?"
                    " WHERE company = ? AND token = ? AND token_status <> ?",
                    (TOKEN_INVALID, now, company, token, TOKEN_INVALID),
                ).rowcount
                == 1
            )

    @_unavailable
    def set_secret(
        self, company: str, secret: str, previous: str | None, until: float | None, now: float | None = None
    ) -> bool:
        """Replace the company's webhook secret, keeping `previous` accepted until `until`."""
        now = time.time() if now is None else now
        conn = self.connection()
        with self._write(conn):
            return (
                conn.execute(
                    "UPDATE company_registrations SET secret = ?, previous_secret = ?,"
                    " previous_secret_until = ?, updated_at = ? WHERE company = ?",
                    (secret, previous, until, now, company),
                ).rowcount
                == 1
            )

    @_unavailable
    def rewrite_ciphertexts(self, company: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Store `new` token/secret/previous_secret ciphertexts if the row still holds `old` ones."""
        conn = self.connection()
        with self._write(conn):
            return (
                conn.execute(
                    "UPDATE company_registrations SET token = ?, secret = ?, previous_secret = ?"
                    " WHERE company = ? AND token IS ? AND secret = ? AND previous_secret IS ?",
                    (
                        new["token"],
                        new["secret"],
                        new["previous_secret"],
                        company,
                        old["token"],
                        old["secret"],
                        old["previous_secret"],
                    ),
                ).rowcount
                == 1
            )

    @_unavailable
    def purge_company(self, company: str) -> dict[str, int]:
        """Delete every row of the company (registration, settings, events) in one transaction."""
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
            return {
                table: conn.execute(f"DELETE FROM {table} WHERE company = ?", (company,)).rowcount  # noqa: S608
                for table in ("company_registrations", "company_settings", "webhook_events")
            }

    @_unavailable
    def oldest_unfinished(self) -> float | None:
        """Return received_at of the oldest row not yet done or dead (None if there is none)."""
        row = (
            self.connection(durable=False)
            .execute(
                # The same predicate as the partial index webhook_events_unfinished, so SQLite uses it.
                "SELECT min(received_at) FROM webhook_events"
                " WHERE status IN ('received', 'processing', 'failed')"
            )
            .fetchone()
        )
        return row[0]

    @_unavailable
    def probe_write(self) -> None:
        """Write one small row, durably, or raise StoreUnavailable (for /readyz)."""
        conn = self.connection()
        with self._write(conn):
            conn.execute(
                "INSERT INTO store_health (id, checked_at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (time.time(),),
            )

    @_unavailable
    def acquire_periodic(self, name: str, every_seconds: float, now: float | None = None) -> bool:
        """Claim the run of periodic job `name` if its last run is older than `every_seconds`."""
        now = time.time() if now is None else now
        conn = self.connection(durable=False)
        with self._write(conn, WORKER_WAIT_SECONDS):
            row = conn.execute(
                "INSERT INTO periodic_runs (name, last_run_at) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_run_at = excluded.last_run_at"
                " WHERE periodic_runs.last_run_at <= ? RETURNING name",
                (name, now, now - every_seconds),
            ).fetchone()
        return row is not None

    def _prune(self, status: str, column: str, before: float, batch: int) -> int:
        conn = self.connection(durable=False)
        deleted = 0
        while True:
            with self._write(conn, WORKER_WAIT_SECONDS):
                count = conn.execute(
                    "DELETE FROM webhook_events WHERE seq IN (SELECT seq FROM webhook_events"  # noqa: S608
                    f" WHERE status = ? AND {column} < ? ORDER BY seq LIMIT ?)",
                    (status, before, batch),
                ).rowcount
            deleted += count
            if count < batch:
                return deleted

    @_unavailable
    def prune_done(self, before: float, batch: int = PRUNE_BATCH) -> int:
        """Delete done rows finished before `before`, `batch` rows per transaction; return how many."""
        return self._prune("done", "done_at", before, batch)

    @_unavailable
    def prune_dead(self, before: float, batch: int = PRUNE_BATCH) -> int:
        """Delete dead rows last changed before `before`, in batches; return how many."""
        return self._prune("dead", "updated_at", before, batch)

    @_unavailable
    def export_rows(self, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Return up to `limit` full rows with seq above `after_seq`, in seq order (for `db copy`)."""
        rows = self.connection().execute(
            f"SELECT {EXPORT_COLUMNS} FROM webhook_events WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (after_seq, limit),
        )
        return [dict(row) for row in rows]

    @_unavailable
    def import_rows(self, rows: list[dict[str, Any]]) -> int:
        """Store copies of rows from another store as they are; (company, id) already here: skipped."""
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
            return sum(
                conn.execute(
                    "INSERT INTO webhook_events (company, id, event, body, status, attempts, due_at,"
                    " lease_token, last_error, traceback, received_at, updated_at, done_at)"
                    " VALUES (:company, :id, :event, :body, :status, :attempts, :due_at, :lease_token,"
                    " :last_error, :traceback, :received_at, :updated_at, :done_at)"
                    " ON CONFLICT (company, id) DO NOTHING",
                    row,
                ).rowcount
                for row in rows
            )

    @_unavailable
    def export_company_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return every registration (ciphertexts as stored) and every company setting (for `db copy`)."""
        settings = self.connection().execute(
            "SELECT company, name, value, updated_at FROM company_settings ORDER BY company, name"
        )
        return self.registrations(), [dict(row) for row in settings]

    @_unavailable
    def import_company_rows(self, registrations: list[dict[str, Any]], settings: list[dict[str, Any]]) -> int:
        """Store copies of registrations and settings as they are; a company or setting already here wins."""
        conn = self.connection()
        with self._write(conn, WORKER_WAIT_SECONDS):
            added = sum(
                conn.execute(
                    f"INSERT INTO company_registrations ({REGISTRATION_COLUMNS}) VALUES (:company, :active,"  # noqa: S608
                    " :token, :token_user, :secret, :previous_secret, :previous_secret_until, :token_status,"
                    " :activated_at, :deactivated_at, :webhook_events, :updated_at)"
                    " ON CONFLICT (company) DO NOTHING",
                    row,
                ).rowcount
                for row in registrations
            )
            return added + sum(
                conn.execute(
                    "INSERT INTO company_settings (company, name, value, updated_at)"
                    " VALUES (:company, :name, :value, :updated_at) ON CONFLICT (company, name) DO NOTHING",
                    row,
                ).rowcount
                for row in settings
            )
