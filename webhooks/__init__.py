"""Rehive webhooks: receive, verify, store once, and process outside the request.

`init_app(app)` wires it all; handlers register with `@on("transaction.execute")` and get an
`Event` and the admin `RehiveClient`; anything they send that moves money carries
`idempotency_key(event, step)`.
"""

from __future__ import annotations

import logging
import threading

import click
from flask import Flask
from flask.cli import FlaskGroup, get_debug_flag
from werkzeug.serving import is_running_from_reloader

from auth import our_company
from errors import ApiError
from rehive_client import RehiveError
from store.cli import store_of
from store.sqlite import SqliteStore as Inbox
from webhooks import cli, receive, savings
from webhooks.events import Event, derived_key, idempotency_key
from webhooks.extension import Webhooks, parse_networks, secrets_of, webhooks_of
from webhooks.registry import Handler, Registry, on, registry
from webhooks.worker import WorkerPool

log = logging.getLogger("webhooks")

__all__ = [
    "Event",
    "Handler",
    "Inbox",
    "Registry",
    "Webhooks",
    "WorkerPool",
    "derived_key",
    "idempotency_key",
    "init_app",
    "on",
    "registry",
    "serves_requests",
    "webhooks_of",
]


def serves_requests() -> bool:
    """Tell whether this process will serve requests (gunicorn, `flask run`), not run a CLI command.

    The Flask CLI builds the app for every command (`flask webhooks list` included); only `run`
    serves, and with the reloader only in its child process.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(ctx.find_root().command, FlaskGroup):
        return True
    if ctx.info_name != "run" or ctx.parent is None or ctx.parent.parent is not None:
        return False
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return not reload or is_running_from_reloader()


def init_app(app: Flask) -> Webhooks:
    """Create the inbox, register the endpoint and CLI, and start workers if this process serves."""
    settings = app.config["SETTINGS"]
    inbox = store_of(app)  # opened and upgraded by store.cli.init_app
    # The app's own registry: handlers added to it stay with this app; global ones apply to all.
    app_registry = Registry(parent=registry)
    if settings.savings_percent > 0:
        app_registry.add("transaction.execute", savings.auto_savings)
    state = Webhooks(
        inbox=inbox,
        registry=app_registry,
        pool=WorkerPool(app, inbox, app_registry, threads=settings.webhook_worker_threads),
        secrets=secrets_of(settings),
        allowed_networks=parse_networks(settings.webhook_allowed_ips),
    )
    app.extensions["webhooks"] = state
    app.register_blueprint(receive.bp)
    app.cli.add_command(cli.group)
    if settings.webhook_worker == "thread" and serves_requests():
        state.pool.start()
        inbox.listen(state.pool.wake)  # other processes' new events (Postgres LISTEN; SQLite: polling)
        if settings.company is None:
            # Learn our company now, off the request path, so that a delivery does not wait on Rehive.
            threading.Thread(target=_learn_company, args=(app,), name="learn-company", daemon=True).start()
    return state


def _learn_company(app: Flask) -> None:
    with app.app_context():
        try:
            our_company()
        except (RehiveError, ApiError) as exc:  # the first request that needs it asks again
            log.warning("could not learn our company from Rehive yet: %s", type(exc).__name__)
