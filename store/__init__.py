"""The store: the inbox, per-company settings and company registrations behind one interface.

`open_store(url)` picks the backend once, from `DATABASE_URL`: `sqlite:///relative/path` (relative to
the project root), `sqlite:////absolute/path`, or `postgresql://user:password@host:port/dbname?...`.
Nothing outside this package imports sqlite3 or psycopg: every failure of the database reaches the
rest of the code as `StoreUnavailable`.

Both backends keep their schema as plain SQL files, one per version, in `sql/<backend>/NNNN_name.sql`;
the version applied is recorded in the store (`schema_migrations`), and `upgrade()` applies what is
missing under a lock, so several processes starting at once on a fresh store do it exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SQL = Path(__file__).resolve().parent / "sql"
DEFAULT_URL = "sqlite:///instance/extension.sqlite3"
POSTGRES_SCHEMES = ("postgresql", "postgres")

STATUSES = ("received", "processing", "done", "failed", "dead")
REPLAYABLE = ("failed", "dead", "done")
UNFINISHED = ("received", "processing", "failed")
MAX_ERROR_CHARS = 1_000
MAX_TRACEBACK_CHARS = 20_000
# Under Rehive's 5 s cut-off: a delivery that cannot be stored by then is answered 503, not left hanging.
REQUEST_WAIT_SECONDS = 4.0
PRUNE_BATCH = 500  # rows deleted per transaction: short transactions, no long lock on a hot table


class StoreUnavailable(RuntimeError):
    """The store cannot do what was asked now (down, locked, full, timed out); try again later."""


class StoreURLError(ValueError):
    """DATABASE_URL does not name a store we can open."""


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


# A claim's scope: which companies' events may run now. Fixed SQL fragments; values are parameters.
REGISTERED_SCOPE = (
    " AND company IN (SELECT company FROM company_registrations WHERE active AND token_status = 'ok')"
)
COMPANY_SCOPE = " AND company = ?"
REGISTRATION_COLUMNS = (
    "company, active, token, token_user, secret, previous_secret, previous_secret_until, token_status,"
    " activated_at, deactivated_at, webhook_events, updated_at"
)
TOKEN_OK = "ok"  # noqa: S105 (a state, not a password)
TOKEN_INVALID = "token_invalid"  # noqa: S105


def scope(company: str | None, registered: bool) -> tuple[str, tuple[Any, ...]]:
    """Return the WHERE fragment (with `?` placeholders) and parameters limiting which events are claimed.

    `company`: only that company's (single mode); `registered`: only those of companies that are active
    with a working token (multi mode); neither: every event (tools and tests).
    """
    if registered:
        return REGISTERED_SCOPE, ()
    if company is not None:
        return COMPANY_SCOPE, (company,)
    return "", ()


def registration_row(row: Any) -> dict[str, Any]:
    """Return a registration row as a dict with `active` a bool on both backends."""
    found = dict(row)
    found["active"] = bool(found["active"])
    return found


def redact(url: str) -> str:
    """Return `url` with its password (if any) replaced by ***, for logs, errors and repr."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def sqlite_path(url: str) -> str:
    """Return the file a `sqlite:` URL names; a relative path is relative to the project root."""
    if not url.startswith("sqlite:///"):
        raise StoreURLError(
            "DATABASE_URL for SQLite must look like sqlite:///relative/path or sqlite:////abs"
        )
    path = url[len("sqlite:///") :]
    if not path or path.endswith("/"):
        raise StoreURLError("DATABASE_URL names no SQLite file")
    return str(ROOT / path) if not path.startswith("/") else path


def check_url(url: str) -> None:
    """Raise StoreURLError (naming the scheme, never the password) unless `url` names a store."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        sqlite_path(url)
    elif scheme in POSTGRES_SCHEMES:
        if not urlsplit(url).path.strip("/"):
            raise StoreURLError(f"DATABASE_URL names no database: {redact(url)}")
    else:
        raise StoreURLError(
            f"DATABASE_URL has the unsupported scheme {scheme or '(none)'!r}; use sqlite:/// or postgresql://"
        )


def url_of(settings: Any) -> str:
    """Return the store URL the settings describe (DATABASE_URL, else DATABASE_PATH as SQLite)."""
    if settings.database_url:
        return settings.database_url
    path = Path(settings.database_path)
    return "sqlite:///" + str(path if path.is_absolute() else Path.cwd() / path)


class Store(Protocol):
    """What both backends offer; see store/sqlite.py and store/postgres.py."""

    backend: str

    def upgrade(self) -> tuple[int, int]: ...
    def schema_version(self) -> int: ...
    def insert(
        self, company: str, event_id: str, event: str, body: str, now: float | None = None
    ) -> bool: ...
    def has_due(
        self, now: float | None = None, *, company: str | None = None, registered: bool = False
    ) -> bool: ...
    def bury_expired(self, max_attempts: int, now: float | None = None) -> list[dict[str, Any]]: ...
    def claim_next(
        self,
        lease_seconds: float,
        now: float | None = None,
        *,
        company: str | None = None,
        registered: bool = False,
    ) -> Claim | None: ...
    def renew(self, claim: Claim, lease_seconds: float, now: float | None = None) -> bool: ...
    def finish(self, claim: Claim, now: float | None = None) -> bool: ...
    def finish_and_claim(
        self,
        claim: Claim,
        lease_seconds: float,
        now: float | None = None,
        *,
        company: str | None = None,
        registered: bool = False,
    ) -> tuple[bool, Claim | None]: ...
    def fail(
        self,
        claim: Claim,
        error: str,
        traceback: str,
        retry_at: float | None,
        now: float | None = None,
        *,
        count_attempt: bool = True,
    ) -> str | None: ...
    def replay(self, company: str, event_id: str, now: float | None = None) -> str | None: ...
    def replay_dead(self, now: float | None = None) -> list[dict[str, Any]]: ...
    def list_events(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...
    def get(self, event_id: str, company: str | None = None) -> list[dict[str, Any]]: ...
    def counts(self) -> dict[str, int]: ...
    def page_of(
        self, company: str, status: str | None, event: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]: ...
    def counts_of(self, company: str) -> dict[str, int]: ...
    def replay_dead_of(self, company: str, now: float | None = None) -> int: ...
    def company_setting(self, company: str, name: str) -> Any: ...
    def set_company_setting(self, company: str, name: str, value: Any, now: float | None = None) -> None: ...
    def registration(self, company: str) -> dict[str, Any] | None: ...
    def registrations(self) -> list[dict[str, Any]]: ...
    def activate_company(
        self,
        company: str,
        token: str,
        token_user: str,
        secret: str,
        events: list[str],
        now: float | None = None,
    ) -> bool: ...
    def deactivate_company(self, company: str, now: float | None = None) -> bool: ...
    def replace_token(self, company: str, token: str, token_user: str, now: float | None = None) -> bool: ...
    def mark_token_invalid(self, company: str, token: str, now: float | None = None) -> bool: ...
    def set_secret(
        self, company: str, secret: str, previous: str | None, until: float | None, now: float | None = None
    ) -> bool: ...
    def rewrite_ciphertexts(self, company: str, old: dict[str, Any], new: dict[str, Any]) -> bool: ...
    def purge_company(self, company: str) -> dict[str, int]: ...
    def oldest_unfinished(self) -> float | None: ...
    def probe_write(self) -> None: ...
    def acquire_periodic(self, name: str, every_seconds: float, now: float | None = None) -> bool: ...
    def prune_done(self, before: float, batch: int = PRUNE_BATCH) -> int: ...
    def prune_dead(self, before: float, batch: int = PRUNE_BATCH) -> int: ...
    def export_rows(self, after_seq: int, limit: int) -> list[dict[str, Any]]: ...
    def import_rows(self, rows: list[dict[str, Any]]) -> int: ...
    def export_company_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...
    def import_company_rows(
        self, registrations: list[dict[str, Any]], settings: list[dict[str, Any]]
    ) -> int: ...
    def listen(self, wake: Any) -> None: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...


def migrations(backend: str) -> list[tuple[int, str, str]]:
    """Return (version, name, sql) for every migration file of `backend`, in order."""
    found = []
    for path in sorted((SQL / backend).glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path.stem, path.read_text()))
    versions = [version for version, _, _ in found]
    assert versions == list(range(1, len(found) + 1)), f"migrations of {backend} must be 0001, 0002, ..."
    return found


def split_statements(sql: str) -> list[str]:
    """Split a migration file on `;` at line ends (our SQL files keep one statement per `;`)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


def open_store(url: str, *, pool_size: int = 10, listen: bool = True) -> Store:
    """Open the store `url` names (see check_url); the schema is not touched until upgrade()."""
    check_url(url)
    if url.startswith("sqlite:"):
        from store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    from store.postgres import PostgresStore

    return PostgresStore(url, pool_size=pool_size, listen=listen)
