"""Rehive webhooks: receive, verify, store once, and process outside the request.

`init_app(app)` wires it all; handlers register with `@on("transaction.execute")` and get an
`Event` and the admin `RehiveClient`; anything they send that moves money carries
`idempotency_key(event, step)`.
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup, get_debug_flag
from werkzeug.serving import is_running_from_reloader

from companies import company_of
from store.cli import store_of
from store.sqlite import SqliteStore as Inbox
from webhooks import cli, receive, reconcile, savings
from webhooks.events import Event, derived_key, idempotency_key
from webhooks.extension import Webhooks, parse_networks, secrets_of, webhooks_of
from webhooks.registry import Handler, Registry, on, registry
from webhooks.worker import WorkerPool

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
    # Always on: the percent is per company and may be changed on the manage page (0: it does nothing).
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
    serving = serves_requests()
    if serving and (settings.company is not None or settings.webhook_worker == "thread"):
        # Check (or learn) the admin token's company now, off the request path: custom requests and
        # handlers wait for it, and a delivery then never waits on Rehive. If this ask fails, the
        # first request or worker round that needs the answer asks again.
        company_of(app).start()
    if settings.webhook_worker == "thread" and serving:
        state.pool.start()
        inbox.listen(state.pool.wake)  # other processes' new events (Postgres LISTEN; SQLite: polling)
    if settings.webhook_reconcile_minutes > 0 and serving:
        reconcile.start_periodic(app)
    return state
