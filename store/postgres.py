"""The PostgreSQL backend: one inbox shared by every process of every host.

Done as the mature Postgres queues do it (Oban, River, Procrastinate, good_job):
- a pool of at most `pool_size` connections per process (psycopg_pool), plus one listener;
- a delivery is committed with `synchronous_commit = on` before it is acknowledged, and
  `INSERT ... ON CONFLICT (company, id) DO NOTHING` decides "once";
- a claim locks the next due row in a CTE with `FOR UPDATE SKIP LOCKED`, so workers of all hosts
  never wait on one another, then leases it exactly as the SQLite store does;
- new events wake idle workers of other processes through NOTIFY, sent at most once per
  NOTIFY_INTERVAL per process (NOTIFY serialises commits on a database-wide lock), on one dedicated
  listener connection outside the pool that LISTENs again after every reconnect; polling stays the
  backstop, so a lost notification costs at most one poll interval;
- `listen=False` (DATABASE_LISTEN=off, for PgBouncer in transaction mode): no LISTEN/NOTIFY, no
  prepared statements, no session state: polling only.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

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
    redact,
    registration_row,
    scope,
    split_statements,
)

log = logging.getLogger("webhooks")

CHANNEL = "webhook_events"
NOTIFY_INTERVAL = 0.05  # at most one NOTIFY per this many seconds per process
LISTENER_RETRY_SECONDS = 1.0
LISTEN_TIMEOUT_SECONDS = 0.5  # how often the listener looks up to see whether it should stop
WORKER_WAIT_SECONDS = 30.0
# Any constant both hosts agree on: the advisory lock held while the schema is created or upgraded.
UPGRADE_LOCK = 0x7265686976655F31
# One statement, so one round trip and its own transaction (autocommit): set_config(..., true) makes
# synchronous_commit `on` for that transaction whatever the server's or role's default, so the commit
# has reached the disk (of the primary, and of synchronous standbys if any) before we answer 202.
INSERT = (
    "INSERT INTO webhook_events (company, id, event, body, due_at, received_at, updated_at)"
    " SELECT %s, %s, %s, %s, %s, %s, %s FROM (SELECT set_config('synchronous_commit', 'on', true)) AS durable"
    " ON CONFLICT (company, id) DO NOTHING"
)
LATEST_VERSION = "SELECT coalesce(max(version), 0) AS v FROM schema_migrations"
COLUMNS = (
    "company, id, event, body, status, attempts, due_at, lease_token, last_error, traceback,"
    " received_at, updated_at, done_at"
)

P = ParamSpec("P")


def _scope(company: str | None, registered: bool) -> tuple[str, tuple[Any, ...]]:
    where, params = scope(company, registered)
    return where.replace("?", "%s"), params


R = TypeVar("R")


def _unavailable(method: Callable[P, R]) -> Callable[P, R]:
    """Report a failure of the database (or of the pool to hand a connection) as StoreUnavailable."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


class PostgresStore:
    """The store in a PostgreSQL database, through a capped pool of connections."""

    backend = "postgres"

    def __init__(self, url: str, *, pool_size: int = 10, listen: bool = True) -> None:
        self._url = url
        self.listening = listen
        self.pool_size = pool_size
        # Behind PgBouncer in transaction mode a prepared statement may meet another server session.
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if not listen:
            kwargs["prepare_threshold"] = None
        self._kwargs = kwargs
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            timeout=REQUEST_WAIT_SECONDS,
            open=False,
            name="store",
        )
        self._pool.open(wait=False)
        self._token = uuid.uuid4().hex  # this process's NOTIFY payload, so it ignores its own
        self._notify_lock = threading.Lock()
        self._last_notify = 0.0
        self._trailing: threading.Timer | None = None
        self._listener: threading.Thread | None = None
        self._listener_conn: psycopg.Connection | None = None
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"<PostgresStore {redact(self._url)} pool={self.pool_size}>"

    @contextmanager
    def _conn(self, wait: float = REQUEST_WAIT_SECONDS) -> Iterator[psycopg.Connection]:
        with self._pool.connection(timeout=wait) as conn:
            yield conn

    def close(self) -> None:
        """Nothing per thread: connections go back to the pool after each call."""

    def shutdown(self) -> None:
        """Stop the listener and close every connection of the pool."""
        self._stopping.set()
        with self._notify_lock:
            if self._trailing is not None:
                self._trailing.cancel()
        conn = self._listener_conn
        if conn is not None:
            with suppress(psycopg.Error, OSError):
                conn.cancel_safe()
        if self._listener is not None:
            self._listener.join(5)
        self._pool.close()

    # -- schema ------------------------------------------------------------------------------

    @_unavailable
    def schema_version(self) -> int:
        """Return the schema version applied (0 on an empty database)."""
        with self._conn() as conn:
            if conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()["t"] is None:
                return 0
            return conn.execute(LATEST_VERSION).fetchone()["v"]

    @_unavailable
    def upgrade(self) -> tuple[int, int]:
        """Create or upgrade the schema, in one transaction under an advisory lock; return (before, after).

        A transaction-level lock (not a session one) so that it also holds behind PgBouncer; the
        DDL is transactional, so a process killed half-way leaves the previous version intact.
        """
        with self._conn(WORKER_WAIT_SECONDS) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (UPGRADE_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, name text NOT NULL, applied_at double precision NOT NULL)"
            )
            before = conn.execute(LATEST_VERSION).fetchone()["v"]
            after = before
            for version, name, sql in migrations(self.backend):
                if version <= before:
                    continue
                for statement in split_statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (version, name, time.time()),
                )
                log.info("store schema upgraded to %s (%s)", version, name)
                after = version
        return before, after

    def create_schema(self) -> None:
        """Create or upgrade the schema."""
        self.upgrade()

    # -- receiving ---------------------------------------------------------------------------

    @_unavailable
    def insert(self, company: str, event_id: str, event: str, body: str, now: float | None = None) -> bool:
        """Store a delivery, committed durably; return False if (company, id) was already stored."""
        now = time.time() if now is None else now
        with self._conn() as conn:
            stored = conn.execute(INSERT, (company, event_id, event, body, now, now, now)).rowcount == 1
            if stored and self._should_notify():
                # After the commit, as its own statement: NOTIFY is only a hint (polling backs it up).
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
            elif stored and self.listening:
                self._notify_later()
        return stored

    def _should_notify(self) -> bool:
        if not self.listening:
            return False
        with self._notify_lock:
            now = time.monotonic()
            if now - self._last_notify < NOTIFY_INTERVAL or self._trailing is not None:
                return False
            self._last_notify = now
            return True

    def _notify_later(self) -> None:
        """Send one NOTIFY when the interval is over, for the events it held back (the end of a burst)."""
        with self._notify_lock:
            if self._trailing is not None or self._stopping.is_set():
                return
            delay = max(0.0, self._last_notify + NOTIFY_INTERVAL - time.monotonic())
            self._trailing = threading.Timer(delay, self._send_trailing)
            self._trailing.daemon = True
            self._trailing.start()

    def _send_trailing(self) -> None:
        with self._notify_lock:
            self._trailing = None
            self._last_notify = time.monotonic()
        try:
            with self._conn() as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            # Only a hint: the other processes' workers find the events on their next poll.
            log.info("store could not send a wake-up (%s); workers will poll", type(exc).__name__)

    # -- waking ------------------------------------------------------------------------------

    def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever another process stores an event (no-op with DATABASE_LISTEN=off)."""
        if not self.listening or self._listener is not None:
            return
        self._listener = threading.Thread(
            target=self._listen, args=(wake,), name="store-listener", daemon=True
        )
        self._listener.start()

    def _listen(self, wake: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    self._listener_conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")  # again after every reconnect
                    wake()  # events may have arrived while we were not listening
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                            if notify.payload != self._token:
                                wake()
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                log.warning("store listener lost its connection (%s); polling meanwhile", type(exc).__name__)
                self._stopping.wait(LISTENER_RETRY_SECONDS)
            finally:
                self._listener_conn = None

    # -- processing --------------------------------------------------------------------------

    @_unavailable
    def has_due(
        self, now: float | None = None, *, company: str | None = None, registered: bool = False
    ) -> bool:
        """Tell whether any row (of the scope, see store.scope) may be claimed now."""
        now = time.time() if now is None else now
        where, params = _scope(company, registered)
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            row = conn.execute(
                f"SELECT 1 FROM webhook_events WHERE due_at <= %s{where} LIMIT 1",  # noqa: S608
                (now, *params),
            ).fetchone()
        return row is not None

    @_unavailable
    def bury_expired(self, max_attempts: int, now: float | None = None) -> list[dict[str, Any]]:
        """Mark dead the rows whose lease ran out on their last allowed attempt; return them."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return conn.execute(
                "UPDATE webhook_events SET status = 'dead', due_at = NULL, lease_token = NULL,"
                " last_error = 'lease expired on the last attempt (did the worker die?)', updated_at = %s"
                " WHERE status = 'processing' AND due_at <= %s AND attempts >= %s"
                " RETURNING company, id, event, attempts",
                (now, now, max_attempts),
            ).fetchall()

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
        token = uuid.uuid4().hex
        where, params = _scope(company, registered)
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            # The CTE locks exactly one row (skipping rows other workers hold) before the UPDATE,
            # so the planner cannot turn LIMIT 1 into several updates.
            row = conn.execute(
                f"WITH next AS (SELECT seq FROM webhook_events WHERE due_at <= %s{where}"  # noqa: S608
                " ORDER BY due_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE webhook_events AS e SET status = 'processing', attempts = e.attempts + 1,"
                " lease_token = %s, due_at = %s, updated_at = %s FROM next WHERE e.seq = next.seq"
                " RETURNING e.seq, e.company, e.id, e.event, e.body, e.attempts",
                (now, *params, token, now + lease_seconds, now),
            ).fetchone()
        if row is None:
            return None
        return Claim(lease_token=token, **row)

    def finish_and_claim(
        self,
        claim: Claim,
        lease_seconds: float,
        now: float | None = None,
        *,
        company: str | None = None,
        registered: bool = False,
    ) -> tuple[bool, Claim | None]:
        """Mark `claim` done, then lease the next due row; return (finished, next).

        Two statements, each its own transaction: rows are locked one by one here, so there is no
        store-wide write lock for a single transaction to save a turn of.
        """
        now = time.time() if now is None else now
        finished = self.finish(claim, now)
        return finished, self.claim_next(lease_seconds, now, company=company, registered=registered)

    @_unavailable
    def renew(self, claim: Claim, lease_seconds: float, now: float | None = None) -> bool:
        """Extend the claim's lease from now; False if it was already lost to another worker."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return (
                conn.execute(
                    "UPDATE webhook_events SET due_at = %s, updated_at = %s"
                    " WHERE seq = %s AND status = 'processing' AND lease_token = %s",
                    (now + lease_seconds, now, claim.seq, claim.lease_token),
                ).rowcount
                == 1
            )

    @_unavailable
    def finish(self, claim: Claim, now: float | None = None) -> bool:
        """Mark the claimed row done; False if the lease was lost to another worker meanwhile."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return (
                conn.execute(
                    "UPDATE webhook_events SET status = 'done', due_at = NULL, lease_token = NULL,"
                    " done_at = %s, updated_at = %s WHERE seq = %s AND status = 'processing'"
                    " AND lease_token = %s",
                    (now, now, claim.seq, claim.lease_token),
                ).rowcount
                == 1
            )

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
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            cursor = conn.execute(
                "UPDATE webhook_events SET status = %s, due_at = %s, lease_token = NULL, last_error = %s,"
                " traceback = %s, updated_at = %s, attempts = greatest(attempts - %s, 0)"
                " WHERE seq = %s AND status = 'processing' AND lease_token = %s",
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
        """Put a failed/dead/done event back to received with no attempts; return its old status."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn, conn.transaction():
            row = conn.execute(
                "SELECT status FROM webhook_events WHERE company = %s AND id = %s FOR UPDATE",
                (company, event_id),
            ).fetchone()
            if row is None:
                return None
            if row["status"] in REPLAYABLE:
                conn.execute(
                    "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = %s,"
                    " lease_token = NULL, updated_at = %s WHERE company = %s AND id = %s",
                    (now, now, company, event_id),
                )
            return row["status"]

    @_unavailable
    def replay_dead(self, now: float | None = None) -> list[dict[str, Any]]:
        """Put every dead event back to received with no attempts; return (company, id, event)s."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return conn.execute(
                "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = %s,"
                " lease_token = NULL, updated_at = %s WHERE status = 'dead' RETURNING company, id, event",
                (now, now),
            ).fetchall()

    @_unavailable
    def list_events(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return rows without their body, newest first, optionally of one status."""
        sql = (
            "SELECT company, id, event, status, attempts, received_at, updated_at, done_at, due_at,"
            " last_error FROM webhook_events"
        )
        params: list[Any] = []
        if status:
            sql += " WHERE status = %s"
            params.append(status)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += " LIMIT %s"
            params.append(limit)
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    @_unavailable
    def get(self, event_id: str, company: str | None = None) -> list[dict[str, Any]]:
        """Return every full row with this id (one per company, or only `company`'s)."""
        sql = "SELECT * FROM webhook_events WHERE id = %s"
        params: list[Any] = [event_id]
        if company is not None:
            sql += " AND company = %s"
            params.append(company)
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return conn.execute(sql + " ORDER BY company", params).fetchall()  # type: ignore[arg-type]

    @_unavailable
    def counts(self) -> dict[str, int]:
        """Return how many rows are in each status."""
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            rows = conn.execute("SELECT status, count(*) AS n FROM webhook_events GROUP BY status")
            return {row["status"]: row["n"] for row in rows}

    # -- the manage page: one company's rows and settings --------------------------------------

    @_unavailable
    def page_of(
        self, company: str, status: str | None, event: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """Return how many of the company's rows match, and `limit` of them from `offset`, newest first."""
        # An empty filter matches everything: one fixed statement, every value a parameter.
        params = [company, status or "", status or "", event or "", event or ""]
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            total = conn.execute(
                "SELECT count(*) AS n FROM webhook_events"
                " WHERE company = %s AND (%s = '' OR status = %s) AND (%s = '' OR event = %s)",
                params,
            ).fetchone()["n"]
            rows = conn.execute(
                "SELECT id, event, status, attempts, received_at, updated_at, last_error FROM webhook_events"
                " WHERE company = %s AND (%s = '' OR status = %s) AND (%s = '' OR event = %s)"
                " ORDER BY seq DESC LIMIT %s OFFSET %s",
                [*params, limit, offset],
            ).fetchall()
        return total, [dict(row) for row in rows]

    @_unavailable
    def counts_of(self, company: str) -> dict[str, int]:
        """Return how many of the company's rows are in each status."""
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            rows = conn.execute(
                "SELECT status, count(*) AS n FROM webhook_events WHERE company = %s GROUP BY status",
                (company,),
            )
            return {row["status"]: row["n"] for row in rows}

    @_unavailable
    def replay_dead_of(self, company: str, now: float | None = None) -> int:
        """Put every dead event of the company back to received with no attempts; return how many."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return conn.execute(
                "UPDATE webhook_events SET status = 'received', attempts = 0, due_at = %s,"
                " lease_token = NULL, updated_at = %s WHERE company = %s AND status = 'dead'",
                (now, now, company),
            ).rowcount

    @_unavailable
    def company_setting(self, company: str, name: str) -> Any:
        """Return the company's setting `name` (JSON-decoded), or None when it was never set."""
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            row = conn.execute(
                "SELECT value FROM company_settings WHERE company = %s AND name = %s", (company, name)
            ).fetchone()
        return None if row is None else json.loads(row["value"])

    @_unavailable
    def set_company_setting(self, company: str, name: str, value: Any, now: float | None = None) -> None:
        """Store the company's setting `name` (as JSON), replacing any earlier value."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            conn.execute(
                "INSERT INTO company_settings (company, name, value, updated_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (company, name) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (company, name, json.dumps(value), now),
            )

    # -- company registrations (multi-company mode; every token and secret is a ciphertext) ----------

    @_unavailable
    def registration(self, company: str) -> dict[str, Any] | None:
        """Return the company's registration row, or None if it never activated (or was purged)."""
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {REGISTRATION_COLUMNS} FROM company_registrations WHERE company = %s",  # noqa: S608
                (company,),
            ).fetchone()
        return None if row is None else registration_row(row)

    @_unavailable
    def registrations(self) -> list[dict[str, Any]]:
        """Return every registration row, by company."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {REGISTRATION_COLUMNS} FROM company_registrations ORDER BY company"  # noqa: S608
            ).fetchall()
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
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO company_registrations (company, active, token, token_user, secret, token_status,"
                " activated_at, webhook_events, updated_at) VALUES (%s, true, %s, %s, %s, 'ok', %s, %s, %s)"
                " ON CONFLICT (company) DO UPDATE SET active = true, token = excluded.token,"
                " token_user = excluded.token_user, token_status = 'ok',"
                " activated_at = excluded.activated_at,"
                " deactivated_at = NULL, webhook_events = excluded.webhook_events,"
                " updated_at = excluded.updated_at RETURNING (xmax = 0) AS created",
                (company, token, token_user, secret, now, json.dumps(events), now),
            ).fetchone()
        return bool(row["created"])

    @_unavailable
    def deactivate_company(self, company: str, now: float | None = None) -> bool:
        """Make the company inactive and forget its token; False if it never activated."""
        now = time.time() if now is None else now
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE company_registrations SET token = NULL,"
                    " deactivated_at = CASE WHEN active THEN %s ELSE deactivated_at END, active = false,"
                    " updated_at = %s WHERE company = %s",
                    (now, now, company),
                ).rowcount
                == 1
            )

    @_unavailable
    def replace_token(self, company: str, token: str, token_user: str, now: float | None = None) -> bool:
        """Replace an active company's token (and clear token_invalid); False if it is not active."""
        now = time.time() if now is None else now
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE company_registrations SET token = %s, token_user = %s, token_status = 'ok',"
                    " updated_at = %s WHERE company = %s AND active",
                    (token, token_user, now, company),
                ).rowcount
                == 1
            )

    @_unavailable
    def mark_token_invalid(self, company: str, token: str, now: float | None = None) -> bool:
        """Mark the company's token refused, if `token` (a ciphertext) is still the stored one."""
        now = time.time() if now is None else now
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE company_registrations SET token_status = %s, updated_at = %s"
                    " WHERE company = %s AND token = %s AND token_status <> %s",
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
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE company_registrations SET secret = %s, previous_secret = %s,"
                    " previous_secret_until = %s, updated_at = %s WHERE company = %s",
                    (secret, previous, until, now, company),
                ).rowcount
                == 1
            )

    @_unavailable
    def rewrite_ciphertexts(self, company: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Store `new` token/secret/previous_secret ciphertexts if the row still holds `old` ones."""
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE company_registrations SET token = %s, secret = %s, previous_secret = %s"
                    " WHERE company = %s AND token IS NOT DISTINCT FROM %s AND secret = %s"
                    " AND previous_secret IS NOT DISTINCT FROM %s",
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
        with self._conn(WORKER_WAIT_SECONDS) as conn, conn.transaction():
            return {
                table: conn.execute(f"DELETE FROM {table} WHERE company = %s", (company,)).rowcount  # noqa: S608
                for table in ("company_registrations", "company_settings", "webhook_events")
            }

    @_unavailable
    def oldest_unfinished(self) -> float | None:
        """Return received_at of the oldest row not yet done or dead (None if there is none)."""
        with self._conn() as conn:
            # The literal predicate of the partial index webhook_events_unfinished, so the planner uses it
            # (a parameter could not be proven to match it).
            return conn.execute(
                "SELECT min(received_at) AS t FROM webhook_events"
                " WHERE status IN ('received', 'processing', 'failed')"
            ).fetchone()["t"]

    @_unavailable
    def probe_write(self) -> None:
        """Write one small row, committed durably, or raise StoreUnavailable (for /readyz)."""
        with self._conn() as conn, conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute(
                "INSERT INTO store_health (id, checked_at) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (time.time(),),
            )

    @_unavailable
    def acquire_periodic(self, name: str, every_seconds: float, now: float | None = None) -> bool:
        """Claim the run of periodic job `name` if its last run is older than `every_seconds`."""
        now = time.time() if now is None else now
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            row = conn.execute(
                "INSERT INTO periodic_runs (name, last_run_at) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET last_run_at = excluded.last_run_at"
                " WHERE periodic_runs.last_run_at <= %s RETURNING name",
                (name, now, now - every_seconds),
            ).fetchone()
        return row is not None

    def _prune(self, status: str, column: str, before: float, batch: int) -> int:
        deleted = 0
        while True:
            with self._conn(WORKER_WAIT_SECONDS) as conn:
                count = conn.execute(
                    "DELETE FROM webhook_events WHERE seq IN (SELECT seq FROM webhook_events"  # noqa: S608
                    f" WHERE status = %s AND {column} < %s ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED)",
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
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            return conn.execute(
                f"SELECT seq, {COLUMNS} FROM webhook_events WHERE seq > %s ORDER BY seq LIMIT %s",  # noqa: S608
                (after_seq, limit),
            ).fetchall()

    @_unavailable
    def import_rows(self, rows: list[dict[str, Any]]) -> int:
        """Store copies of rows from another store as they are; (company, id) already here: skipped."""
        names = COLUMNS.split(", ")
        placeholders = ", ".join(f"%({name})s" for name in names)
        stored = 0
        with self._conn(WORKER_WAIT_SECONDS) as conn, conn.transaction():
            for row in rows:
                stored += conn.execute(
                    f"INSERT INTO webhook_events ({COLUMNS}) VALUES ({placeholders})"  # noqa: S608
                    " ON CONFLICT (company, id) DO NOTHING",
                    row,
                ).rowcount
        return stored

    @_unavailable
    def export_company_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return every registration (ciphertexts as stored) and every company setting (for `db copy`)."""
        with self._conn(WORKER_WAIT_SECONDS) as conn:
            settings = conn.execute(
                "SELECT company, name, value, updated_at FROM company_settings ORDER BY company, name"
            ).fetchall()
        return self.registrations(), [dict(row) for row in settings]

    @_unavailable
    def import_company_rows(self, registrations: list[dict[str, Any]], settings: list[dict[str, Any]]) -> int:
        """Store copies of registrations and settings as they are; a company or setting already here wins."""
        added = 0
        with self._conn(WORKER_WAIT_SECONDS) as conn, conn.transaction():
            for row in registrations:
                added += conn.execute(
                    f"INSERT INTO company_registrations ({REGISTRATION_COLUMNS}) VALUES (%(company)s,"  # noqa: S608
                    " %(active)s, %(token)s, %(token_user)s, %(secret)s, %(previous_secret)s,"
                    " %(previous_secret_until)s, %(token_status)s, %(activated_at)s, %(deactivated_at)s,"
                    " %(webhook_events)s, %(updated_at)s) ON CONFLICT (company) DO NOTHING",
                    row,
                ).rowcount
            for row in settings:
                added += conn.execute(
                    "INSERT INTO company_settings (company, name, value, updated_at)"
                    " VALUES (%(company)s, %(name)s, %(value)s, %(updated_at)s)"
                    " ON CONFLICT (company, name) DO NOTHING",
                    row,
                ).rowcount
        return added
