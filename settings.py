"""Read the service's settings from the environment, once, when the app is built."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import limits

import store

DEFAULT_API_URL = "https://api.rehive.com/3/"


class ConfigError(RuntimeError):
    """The environment does not describe a service that can start."""


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with; secrets are hidden from repr."""

    admin_token: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    webhook_secret_previous: str = field(default="", repr=False)
    rehive_api_url: str = DEFAULT_API_URL
    company: str | None = None
    auth_cache_seconds: float = 10.0
    auth_cache_size: int = 10_000
    transactions_all_groups: frozenset[str] = frozenset({"admin"})
    trusted_proxies: int = 0
    cors_origins: tuple[str, ...] = ()
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    webhook_allowed_ips: frozenset[str] = frozenset()
    database_path: str = "instance/extension.sqlite3"
    # DATABASE_URL (may carry a password: hidden from repr); empty: database_path, as SQLite.
    database_url: str = field(default="", repr=False)
    database_pool_size: int = 10
    database_listen: bool = True
    webhook_retention_days: float = 30.0
    webhook_max_bytes: int = 1_048_576
    webhook_worker: str = "thread"
    webhook_worker_threads: int = 4
    webhook_lease_seconds: float = 30.0
    webhook_retry_first_seconds: float = 5.0
    webhook_retry_max_seconds: float = 600.0
    webhook_max_attempts: int = 8
    savings_percent: int = 0
    custom_rate_limit: str = "120/minute"
    log_format: str = "text"
    metrics_allowed_ips: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    metrics_token: str = field(default="", repr=False)
    webhook_url: str = ""
    webhook_reconcile_minutes: float = 0.0
    local_mode: bool = False  # set by `make run` without a .env: the manage page offers "Try the flow"
    # EXTENSION_MODE: "single" (the company of REHIVE_ADMIN_TOKEN) or "multi" (every company that
    # activated us through /activate/; tokens and secrets live in the store, encrypted).
    extension_mode: str = "single"
    token_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    public_url: str = ""
    activation_allowed_companies: frozenset[str] = frozenset()
    webhook_events: tuple[str, ...] = ()  # empty: every event name a registered handler wants
    webhook_secret_grace_seconds: float = 3600.0

    @property
    def multi(self) -> bool:
        """Tell whether the service serves every company that activated it."""
        return self.extension_mode == "multi"

    def replace(self, **changes: object) -> Settings:
        """Return a copy with some fields changed (tests use this)."""
        return dataclasses.replace(self, **changes)


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def parse_rate(value: str) -> limits.RateLimitItem:
    """Return the one rate `value` names (`120/minute`, `2 per second`), or raise ValueError."""
    items = limits.parse_many(value)
    if len(items) != 1 or items[0].amount < 1:
        raise ValueError(f"one rate of at least 1, like '120/minute', got {value!r}")
    return items[0]


def check_fernet_keys(keys: tuple[str, ...]) -> list[str]:
    """Name (by position, never by value) every key of TOKEN_ENCRYPTION_KEYS that is not a Fernet key."""
    from cryptography.fernet import Fernet

    problems = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            problems.append(
                f"TOKEN_ENCRYPTION_KEYS key #{position} is not a Fernet key (32 url-safe base64 bytes;"
                " make one with `python -c 'from cryptography.fernet import Fernet;"
                " print(Fernet.generate_key().decode())'`)"
            )
    return problems


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from environment variables; name every problem in one error."""
    problems: list[str] = []
    env = {key: value.strip() for key, value in environ.items()}

    def required(name: str) -> str:
        value = env.get(name, "")
        if not value:
            problems.append(f"{name} is required")
        return value

    def number(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
        raw = env.get(name, "")
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            problems.append(f"{name} must be a {kind.__name__}, got {raw!r}")
            return default
        if not math.isfinite(value):  # nan compares false with everything: a cache that never expires
            problems.append(f"{name} must be a finite number, got {raw!r}")
            return default
        if value < minimum:
            problems.append(f"{name} must be at least {minimum}, got {raw!r}")
            return default
        return value

    api_url = env.get("REHIVE_API_URL") or DEFAULT_API_URL
    if not api_url.startswith(("http://", "https://")):
        problems.append(f"REHIVE_API_URL must be an http(s) URL, got {api_url!r}")
    rate = env.get("CUSTOM_RATE_LIMIT") or "120/minute"
    try:
        parse_rate(rate)
    except ValueError:
        problems.append(f"CUSTOM_RATE_LIMIT must be one rate like '120/minute', got {rate!r}")
    worker = env.get("WEBHOOK_WORKER") or "thread"
    if worker not in ("thread", "off"):
        problems.append(f"WEBHOOK_WORKER must be 'thread' or 'off', got {worker!r}")
    log_format = env.get("LOG_FORMAT") or "text"
    if log_format not in ("text", "json"):
        problems.append(f"LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
    webhook_url = env.get("WEBHOOK_URL", "")
    if webhook_url and not webhook_url.startswith(("http://", "https://")):
        problems.append(f"WEBHOOK_URL must be an http(s) URL, got {webhook_url!r}")

    database_url = env.get("DATABASE_URL", "")
    database_path = env.get("DATABASE_PATH", "")
    if database_url and database_path:
        problems.append("set DATABASE_URL or DATABASE_PATH (a shorthand for a SQLite file), not both")
    elif database_url:
        try:
            store.check_url(database_url)
        except store.StoreURLError as exc:
            problems.append(str(exc))
    elif not database_path:
        database_url = store.DEFAULT_URL
    listen = (env.get("DATABASE_LISTEN") or "on").lower()
    if listen not in ("on", "off"):
        problems.append(f"DATABASE_LISTEN must be 'on' or 'off', got {listen!r}")

    mode = (env.get("EXTENSION_MODE") or "single").lower()
    keys: tuple[str, ...] = ()
    public_url = env.get("PUBLIC_URL", "").rstrip("/")
    if mode not in ("single", "multi"):
        problems.append(f"EXTENSION_MODE must be 'single' or 'multi', got {mode!r}")
    elif mode == "multi":
        # Each company brings its own token and secret: one set in the environment would be ambiguous.
        for name in ("REHIVE_ADMIN_TOKEN", "REHIVE_COMPANY", "REHIVE_WEBHOOK_SECRET"):
            if env.get(name):
                problems.append(f"{name} must not be set when EXTENSION_MODE=multi")
        keys = _list(env.get("TOKEN_ENCRYPTION_KEYS", ""))
        if not keys:
            problems.append("TOKEN_ENCRYPTION_KEYS is required when EXTENSION_MODE=multi")
        problems.extend(check_fernet_keys(keys))
        if not public_url:
            problems.append("PUBLIC_URL is required when EXTENSION_MODE=multi")
        elif not public_url.startswith(("http://", "https://")):
            problems.append(f"PUBLIC_URL must be an http(s) URL, got {public_url!r}")
    multi = mode == "multi"
    if multi and not webhook_url and public_url:
        # Activation registers exactly this URL at Rehive, so reconcile knows where deliveries went.
        webhook_url = public_url + "/webhooks/"

    settings = Settings(
        admin_token="" if multi else required("REHIVE_ADMIN_TOKEN"),
        webhook_secret="" if multi else required("REHIVE_WEBHOOK_SECRET"),
        webhook_secret_previous=env.get("REHIVE_WEBHOOK_SECRET_PREVIOUS", ""),
        rehive_api_url=api_url.rstrip("/") + "/",
        company=env.get("REHIVE_COMPANY") or None,
        auth_cache_seconds=number("AUTH_CACHE_SECONDS", 10.0),
        auth_cache_size=number("AUTH_CACHE_SIZE", 10_000, int, 1),
        transactions_all_groups=frozenset(_list(env.get("TRANSACTIONS_ALL_GROUPS", "admin"))),
        trusted_proxies=number("TRUSTED_PROXIES", 0, int),
        cors_origins=_list(env.get("CORS_ORIGINS", "")),
        read_timeout=number("REHIVE_TIMEOUT", 10.0, float, 0.001),
        webhook_allowed_ips=frozenset(_list(env.get("WEBHOOK_ALLOWED_IPS", ""))),
        database_path=database_path or "instance/extension.sqlite3",
        database_url=database_url,
        database_pool_size=number("DATABASE_POOL_SIZE", 10, int, 1),
        database_listen=listen != "off",
        webhook_retention_days=number("WEBHOOK_RETENTION_DAYS", 30.0, float, 0.001),
        webhook_max_bytes=number("WEBHOOK_MAX_BYTES", 1_048_576, int, 1),
        webhook_worker=worker,
        webhook_worker_threads=number("WEBHOOK_WORKER_THREADS", 4, int, 1),
        webhook_lease_seconds=number("WEBHOOK_LEASE_SECONDS", 30.0, float, 0.001),
        webhook_retry_first_seconds=number("WEBHOOK_RETRY_FIRST_SECONDS", 5.0),
        webhook_retry_max_seconds=number("WEBHOOK_RETRY_MAX_SECONDS", 600.0),
        webhook_max_attempts=number("WEBHOOK_MAX_ATTEMPTS", 8, int, 1),
        savings_percent=number("SAVINGS_PERCENT", 0, int),
        custom_rate_limit=rate,
        log_format=log_format,
        metrics_allowed_ips=frozenset(_list(env.get("METRICS_ALLOWED_IPS", "127.0.0.1,::1"))),
        metrics_token=env.get("METRICS_TOKEN", ""),
        webhook_url=webhook_url,
        webhook_reconcile_minutes=number("WEBHOOK_RECONCILE_MINUTES", 0.0),
        local_mode=env.get("LOCAL_MODE", "").lower() in ("1", "true", "yes"),
        extension_mode=mode,
        token_encryption_keys=keys,
        public_url=public_url,
        activation_allowed_companies=frozenset(_list(env.get("ACTIVATION_ALLOWED_COMPANIES", ""))),
        webhook_events=_list(env.get("WEBHOOK_EVENTS", "")),
        webhook_secret_grace_seconds=number("WEBHOOK_SECRET_GRACE_SECONDS", 3600.0),
    )
    if settings.savings_percent > 100:
        problems.append(f"SAVINGS_PERCENT must be 0..100, got {settings.savings_percent}")
    if settings.webhook_reconcile_minutes > 0 and not settings.webhook_url:
        problems.append("WEBHOOK_RECONCILE_MINUTES needs WEBHOOK_URL (the URL Rehive delivers to)")
    if problems:
        raise ConfigError("Cannot start: " + "; ".join(problems) + ". See .env.example.")
    return settings
