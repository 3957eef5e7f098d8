"""`make run`: serve against the Rehive in `.env`, or, with no `.env`, against the local stand-in.

Local mode starts the stand-in and the service together, registers the service's webhook with the
stand-in, prints where everything is and how to try it, and stops both on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path

from devtools.processes import ROOT, listening_socket, service_env, start_local_rehive, start_service
from devtools.stand_in import LOCAL_ADMIN_TOKEN
from rehive_client import RehiveClient, RehiveRequestError

LOCAL_DATABASE = Path("instance/local.sqlite3")
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
        database.parent.mkdir(parents=True, exist_ok=True)
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            path.unlink(missing_ok=True)
        env = local_env(rehive.url, secret, database, savings)
        service = start_service(env, listening_socket(port))
        register_webhooks(rehive.url, service.url, secret)
        print(banner(rehive.url, service.url, savings), flush=True)
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
