"""Open the app's store at start, and `flask db upgrade|status|copy` to look after it by hand."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from settings import ConfigError
from store import STATUSES, Store, StoreURLError, migrations, open_store, redact, url_of

group = AppGroup("db", help="Create, upgrade, inspect or copy the store (DATABASE_URL).")
COPY_BATCH = 500


def init_app(app: Flask) -> Store:
    """Open the store DATABASE_URL names, create or upgrade its schema, and register `flask db`."""
    settings = app.config["SETTINGS"]
    try:
        opened = open_store(
            url_of(settings), pool_size=settings.database_pool_size, listen=settings.database_listen
        )
    except StoreURLError as exc:
        raise ConfigError(f"Cannot start: {exc}.") from None
    # Under a lock (the SQLite lock file; a Postgres advisory lock): processes starting at once on
    # a fresh store wait for the first, then find the schema current.
    opened.upgrade()
    app.extensions["store"] = opened
    app.cli.add_command(group)
    return opened


def store_of(app: Flask | None = None) -> Store:
    """Return the store of `app` (or of the current app)."""
    return (app or current_app).extensions["store"]


@group.command("upgrade")
def upgrade_command() -> None:
    """Create the schema, or upgrade it to the newest version (also done at every start)."""
    before, after = store_of().upgrade()
    if before == after:
        click.echo(f"The schema is at version {after}, the newest; nothing to do.")
    else:
        click.echo(f"Upgraded the schema from version {before} to {after}.")


@group.command("status")
def status_command() -> None:
    """Print the store, its schema version and how many events are in each state."""
    store = store_of()
    newest = len(migrations(store.backend))
    version = store.schema_version()
    click.echo(f"store: {store.backend}")
    click.echo(f"schema version: {version} (newest {newest})")
    counts = store.counts()
    for status in STATUSES:
        click.echo(f"{status}: {counts.get(status, 0)}")


@group.command("copy")
@click.option("--to", "target_url", required=True, help="The store to copy into, e.g. postgresql://...")
def copy_command(target_url: str) -> None:
    """Copy every event (states and attempts included), company setting and registration; safe to re-run."""
    source = store_of()
    try:
        target = open_store(target_url, listen=False, pool_size=2)
    except StoreURLError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    try:
        target.upgrade()
        copied = seen = 0
        last_seq = 0
        while rows := source.export_rows(last_seq, COPY_BATCH):
            last_seq = rows[-1]["seq"]
            seen += len(rows)
            copied += target.import_rows([{k: v for k, v in row.items() if k != "seq"} for row in rows])
        click.echo(f"Copied {copied} event(s) to {redact(target_url)}; {seen - copied} were already there.")
        # Registrations are copied as ciphertexts: the target needs the same TOKEN_ENCRYPTION_KEYS.
        registrations, settings = source.export_company_rows()
        added = target.import_company_rows(registrations, settings)
        click.echo(
            f"Copied {added} of {len(registrations)} company registration(s) and {len(settings)} setting(s);"
            " the rest were already there."
        )
    finally:
        target.shutdown()
