"""`flask companies ...`: the companies served in multi-company mode; never prints a token or secret."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from companies import CompanyRegistry, new_webhook_secret, registry_of
from errors import ApiError
from rehive_client import RehiveError
from webhooks.savings import savings_percent_for

group = AppGroup("companies", help="The companies that activated the extension (EXTENSION_MODE=multi).")


def _registry() -> CompanyRegistry:
    registry = registry_of()
    if not isinstance(registry, CompanyRegistry):
        raise click.ClickException(
            "EXTENSION_MODE is single: the one company is REHIVE_COMPANY (or the admin token's)."
        )
    return registry


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _found(registry: CompanyRegistry, company: str):
    found = registry.get(company)
    if found is None:
        raise click.ClickException(f"Company {company!r} has not activated the extension (or was purged).")
    return found


@group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_command(as_json: bool) -> None:
    """List every company: active, token status, activated and deactivated at, webhook events."""
    rows = [found.public() for found in _registry().all()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No company has activated the extension.")
        return
    click.echo(f"{'company':24} {'active':6} {'token':13} {'activated_at':20} {'deactivated_at':20} events")
    for row in rows:
        click.echo(
            f"{row['company']:24} {'yes' if row['active'] else 'no':6} {row['token_status']:13}"
            f" {_when(row['activated_at']):20} {_when(row['deactivated_at']):20}"
            f" {','.join(row['webhook_events'])}"
        )


@group.command("show")
@click.argument("company")
def show_command(company: str) -> None:
    """Show one company's registration and settings."""
    row = _found(_registry(), company).public()
    row["savings_percent"] = savings_percent_for(company)
    click.echo(json.dumps(row, indent=2))


@group.command("deactivate")
@click.argument("company")
@click.option("--purge", is_flag=True, help="Also delete every row of the company (events, settings).")
def deactivate_command(company: str, purge: bool) -> None:
    """Stop serving a company (its token is deleted); --purge deletes all of its rows."""
    registry = _registry()
    _found(registry, company)
    if purge:
        deleted = registry.purge(company)
        click.echo(f"Purged {company}: " + ", ".join(f"{n} {table}" for table, n in deleted.items()) + ".")
    else:
        registry.deactivate(company)
        click.echo(f"Deactivated {company}; its token is deleted, its events wait for a new activation.")


@group.command("rotate-keys")
def rotate_keys_command() -> None:
    """Re-encrypt every token and secret with the first key of TOKEN_ENCRYPTION_KEYS."""
    changed = _registry().rotate_keys()
    click.echo(f"Re-encrypted {changed} registration(s) with the first key; older keys may now be removed.")


@group.command("rotate-secret")
@click.argument("company")
def rotate_secret_command(company: str) -> None:
    """Give a company a new webhook secret and update its Rehive webhooks; the old one stays valid a while."""
    registry = _registry()
    _found(registry, company)
    settings = current_app.config["SETTINGS"]
    secret = new_webhook_secret()
    # Stored first: from now on both secrets are accepted, so no delivery is refused while Rehive's
    # webhooks change over one by one.
    registry.rotate_secret(company, secret)
    url = settings.public_url + "/webhooks/"
    updated = failed = 0
    try:
        client = registry.client(company)
        body = client.get("admin/webhooks/", params={"url": url, "page_size": 250})
        data = body.get("data")
        hooks = data.get("results") if isinstance(data, dict) else data
        for hook in hooks if isinstance(hooks, list) else []:
            if not isinstance(hook, dict) or hook.get("url") != url:
                continue
            try:
                client.patch(f"admin/webhooks/{int(hook['id'])}/", {"secret": secret})
                updated += 1
            except RehiveError as exc:
                failed += 1
                click.echo(f"Rehive refused to update webhook {hook.get('id')} ({exc.status}).", err=True)
    except (RehiveError, ApiError) as exc:
        raise click.ClickException(
            f"The new secret is stored, but Rehive's webhooks could not be listed ({type(exc).__name__});"
            f" the previous secret stays accepted for {settings.webhook_secret_grace_seconds:.0f} s:"
            " run again."
        ) from None
    grace = settings.webhook_secret_grace_seconds
    click.echo(
        f"New webhook secret for {company}; {updated} Rehive webhook(s) updated, {failed} failed;"
        f" the previous secret is accepted until {_when(time.time() + grace)}."
    )
    if failed:
        raise SystemExit(1)


@group.command("set")
@click.argument("company")
@click.argument("assignment")
def set_command(company: str, assignment: str) -> None:
    """Set a company setting, e.g. `savings_percent=10` (0 to 100)."""
    name, _, value = assignment.partition("=")
    if name != "savings_percent":
        raise click.BadParameter("the one setting is savings_percent=N", param_hint="ASSIGNMENT")
    try:
        percent = int(value)
    except ValueError:
        percent = -1
    if not 0 <= percent <= 100:
        raise click.BadParameter("savings_percent must be an integer from 0 to 100", param_hint="ASSIGNMENT")
    registry = _registry()
    _found(registry, company)
    registry.store.set_company_setting(company, "savings_percent", percent)
    click.echo(f"{company}: savings_percent={percent}.")


def init_app(app: Flask) -> None:
    """Register `flask companies`."""
    app.cli.add_command(group)
