"""`make run`: serve against the Rehive in `.env`, or, with no `.env`, against the local stand-in.

Local mode starts the stand-in and the service together, registers the service's webhook with the
stand-in, prints where everything is and how to try it, and stops both on Ctrl-C.

With `EXTENSION_MODE=multi` it runs the service as a multi-company extension instead: no admin token
and no webhook secret, a fresh Fernet key, and the service registered with the stand-in and activated
for company `demo` the way a Rehive admin does it (the banner shows the calls that activate it for
`other`).
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sys
from pathlib import Path

from devtools.processes import (
    ROOT,
    Process,
    listening_socket,
    service_env,
    start_local_rehive,
    start_service,
)
from devtools.stand_in import COMPANY_ADMINS, LOCAL_ADMIN_TOKEN, SERVICE_NAME, StandIn
from rehive_client import RehiveClient, RehiveRequestError

LOCAL_DATABASE = Path("instance/local.sqlite3")
# Multi mode's settings for the CLI (they hold the throwaway Fernet key: written 0600, never printed).
LOCAL_MULTI_ENV = Path("instance/local-multi.env")
# The CLI needs a complete configuration; listing the inbox uses none of the secrets.
INBOX_COMMAND = (
    f"REHIVE_ADMIN_TOKEN={LOCAL_ADMIN_TOKEN} REHIVE_WEBHOOK_SECRET=unused REHIVE_COMPANY=demo "
    f"DATABASE_PATH={LOCAL_DATABASE} .venv/bin/flask --app app"
)
WEBHOOK_EVENTS = ("transaction.create", "transaction.initiate", "transaction.execute")
DEMO_USERS = (
    ("alice@demo.test", "alice-pass-123", "user"),
    ("bob@demo.test", "bob-pass-123", "user"),
    ("admin@demo.test", "admin-pass-123", "admin"),
)


def configured() -> bool:
    """Return True when a `.env` or the environment points the service at a real Rehive."""
    return Path(".env").exists() or bool(os.environ.get("REHIVE_ADMIN_TOKEN"))


def serve_configured() -> None:
    """Replace this process with gunicorn serving the app as configured."""
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(ROOT / "gunicorn.conf.py"),
        "app:create_app()",
    ]
    os.execv(sys.executable, gunicorn)


def local_env(rehive_url: str, secret: str, database: Path, savings_percent: int | str) -> dict[str, str]:
    """Return the service's environment for serving the stand-in's company `demo`."""
    return service_env(
        os.environ,
        REHIVE_API_URL=rehive_url + "/3/",
        REHIVE_ADMIN_TOKEN=LOCAL_ADMIN_TOKEN,
        REHIVE_COMPANY="demo",
        REHIVE_WEBHOOK_SECRET=secret,
        DATABASE_PATH=str(database),
        SAVINGS_PERCENT=str(savings_percent),
        LOCAL_MODE="1",  # the manage page offers "Try the flow" against the stand-in
    )


def multi_mode() -> bool:
    """Return True when `make run` is asked for a multi-company extension (`EXTENSION_MODE=multi`)."""
    return os.environ.get("EXTENSION_MODE", "").strip().lower() == "multi"


def fernet_key() -> str:
    """Return a new Fernet key: 32 random bytes, URL-safe base64 (what `Fernet.generate_key()` makes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def multi_env(
    rehive_url: str, public_url: str, database: Path, savings_percent: int | str, key: str
) -> dict[str, str]:
    """Return the environment of a multi-company service: no admin token, no company, no webhook secret."""
    return service_env(
        os.environ,
        EXTENSION_MODE="multi",
        # Empty is unset; set, so that a developer's .env cannot add them and stop the start.
        REHIVE_ADMIN_TOKEN="",
        REHIVE_COMPANY="",
        REHIVE_WEBHOOK_SECRET="",
        REHIVE_API_URL=rehive_url + "/3/",
        TOKEN_ENCRYPTION_KEYS=key,
        PUBLIC_URL=public_url,
        ACTIVATION_ALLOWED_COMPANIES="",  # any company may install it
        DATABASE_PATH=str(database),
        SAVINGS_PERCENT=str(savings_percent),
        LOCAL_MODE="1",
    )


def register_webhooks(rehive_url: str, service_url: str, secret: str) -> None:
    """Subscribe the service to the transaction events, as an admin would in Rehive's dashboard."""
    client = RehiveClient(rehive_url + "/3/", LOCAL_ADMIN_TOKEN)
    for event in WEBHOOK_EVENTS:
        try:
            client.post(
                "admin/webhooks/", {"url": service_url + "/webhooks/", "event": event, "secret": secret}
            )
        except RehiveRequestError as exc:  # already registered
            if "already exists" not in exc.message:
                raise


def banner(rehive_url: str, service_url: str, savings: str) -> str:
    """Return the local-mode banner: URLs, demo credentials and a first request to try."""
    users = "\n".join(
        f"    {email:<18} {password:<16} group {group}" for email, password, group in DEMO_USERS
    )
    login = (
        f"curl -s -X POST {rehive_url}/3/auth/login/ -H 'Content-Type: application/json' "
        '-d \'{"user": "alice@demo.test", "company": "demo", "password": "alice-pass-123"}\''
    )
    return f"""
================================ LOCAL MODE ================================
No .env found, so this is a local stand-in for Rehive: no account needed.

  Rehive stand-in  {rehive_url}/3/
  Service          {service_url}/   (GET /custom/transactions/, POST /webhooks/)
  Manage page      {service_url}/manage/   (sign in as admin@demo.test / admin-pass-123)
  Webhooks         transaction.create/.initiate/.execute -> {service_url}/webhooks/
  Auto-savings     {savings}% of every completed credit moves to the user's "savings" account

  Demo users (company "demo"):
{users}

  Try it:
    TOKEN=$({login} | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["token"])')
    curl -s {service_url}/custom/transactions/ -H "Authorization: Token $TOKEN"
  Or watch the whole flow explained step by step: make demo

  The inbox (events received, their state):
    {INBOX_COMMAND} webhooks list
  Ctrl-C stops both.
=============================================================================
""".rstrip()


def activate_other_command(rehive_url: str, service_url: str) -> str:
    """Return the lines with which `other`'s admin installs the extension: log in, register, activate."""
    email, password = COMPANY_ADMINS["other"]
    json_field = 'python3 -c \'import json,sys; print(json.load(sys.stdin)["data"]["{}"])\''
    login = (
        f"curl -s -X POST {rehive_url}/3/auth/login/ -H 'Content-Type: application/json' "
        f'-d \'{{"user": "{email}", "company": "other", "password": "{password}"}}\''
    )
    register = (
        f'curl -s -X POST {rehive_url}/3/admin/services/ -H "Authorization: Token $ADMIN" '
        f'-H \'Content-Type: application/json\' -d \'{{"name": "{SERVICE_NAME}", "url": "{service_url}/"}}\''
    )
    activate = (
        f'curl -s -X PATCH {rehive_url}/3/admin/services/$ID/ -H "Authorization: Token $ADMIN" '
        "-H 'Content-Type: application/json' -d '{\"active\": true}'"
    )
    return (
        f"    ADMIN=$({login} | {json_field.format('token')})\n"
        f"    ID=$({register} | {json_field.format('id')})\n"
        f"    {activate}"
    )


def multi_banner(rehive_url: str, service_url: str, savings: str) -> str:
    """Return the multi-mode banner: the extension is active for `demo`; how to activate it for `other`."""
    cli = f"(set -a; . {LOCAL_MULTI_ENV}; .venv/bin/flask --app app"
    login = (
        f"curl -s -X POST {rehive_url}/3/auth/login/ -H 'Content-Type: application/json' "
        '-d \'{"user": "alice@demo.test", "company": "demo", "password": "alice-pass-123"}\''
    )
    return f"""
========================= LOCAL MODE: MULTI-COMPANY =========================
EXTENSION_MODE=multi: the service holds no admin token. A company's admin registers it with Rehive
(POST /3/admin/services/) and activates it; Rehive then POSTs a fresh service token to /activate/.

  Rehive stand-in  {rehive_url}/3/
  Service          {service_url}/   (POST /activate/, /deactivate/, /rotate/; GET /custom/transactions/)
  Manage page      {service_url}/manage/
  Webhooks         registered by the service at activation, each company with its own secret
  Auto-savings     {savings}% of every completed credit (per company: companies set COMPANY savings_percent=N)

  Active for company "demo" (admin@demo.test / admin-pass-123; users alice, bob).
  Not yet for "other": activate it there as admin@other.test / admin-pass-123 would:
{activate_other_command(rehive_url, service_url)}
  Then mallory@other.test / mallory-pass-123 can use it too.

  Try it:
    TOKEN=$({login} | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["token"])')
    curl -s {service_url}/custom/transactions/ -H "Authorization: Token $TOKEN"
  Or watch both modes explained step by step: make demo

  The companies and the inbox:
    {cli} companies list)
    {cli} webhooks list)
  Ctrl-C stops both.
=============================================================================
""".rstrip()


def fresh_database(database: Path) -> None:
    """Delete the local inbox: the stand-in starts empty every time, so it does too."""
    database.parent.mkdir(parents=True, exist_ok=True)
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)


def write_cli_env(env: dict[str, str], path: Path) -> None:
    """Write the settings the CLI needs to reach the multi-mode store, readable by this user only."""
    names = (
        "EXTENSION_MODE",
        "REHIVE_API_URL",
        "TOKEN_ENCRYPTION_KEYS",
        "PUBLIC_URL",
        "DATABASE_PATH",
        "DATABASE_URL",
        "REHIVE_ADMIN_TOKEN",
        "REHIVE_COMPANY",
        "REHIVE_WEBHOOK_SECRET",
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(f"{name}={env[name]}\n" for name in names)


def start_multi(rehive_url: str, port: int, savings: str) -> Process:
    """Start the service in multi mode on `port` and install it for company `demo`."""
    sock = listening_socket(port)
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # Absolute, so that the service and the CLI (run from anywhere with the env file) use the same file.
    env = multi_env(rehive_url, public_url, LOCAL_DATABASE.resolve(), savings, fernet_key())
    write_cli_env(env, LOCAL_MULTI_ENV)
    service = start_service(env, sock, cwd=Path.cwd())
    try:
        StandIn(rehive_url).install("demo", service.url)
    except BaseException:
        service.stop()
        raise
    return service


def serve_local() -> None:
    """Start the stand-in and the service, wire them together, and wait for Ctrl-C."""
    port = int(os.environ.get("PORT", "8000"))
    rehive = start_local_rehive(port=int(os.environ.get("LOCAL_REHIVE_PORT", "8100")))
    service = None
    try:
        secret = secrets.token_urlsafe(32)
        savings = os.environ.get("SAVINGS_PERCENT", "10")
        # The stand-in starts empty every time, so the local inbox (never the configured one) does too.
        database = LOCAL_DATABASE
        fresh_database(database)
        if multi_mode():
            service = start_multi(rehive.url, port, savings)
            text = multi_banner(rehive.url, service.url, savings)
        else:
            env = local_env(rehive.url, secret, database, savings)
            service = start_service(env, listening_socket(port))
            register_webhooks(rehive.url, service.url, secret)
            text = banner(rehive.url, service.url, savings)
        print(text, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not interrupt the clean-up and leave the stand-in running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nStopping the service and the stand-in...", flush=True)
        if service:
            service.stop()
        rehive.stop()


def main() -> None:
    """Pick the mode and serve."""
    if configured():
        serve_configured()
    # Stop the same way on Ctrl-C and on SIGTERM, even where a shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    serve_local()


if __name__ == "__main__":
    main()
