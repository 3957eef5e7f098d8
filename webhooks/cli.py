"""`flask webhooks list|show|replay|work`: look at the inbox, put events back, or process them."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from types import FrameType
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from companies import CONFIRMED, company_of
from errors import ApiError
from rehive_client import RehiveError
from store import REPLAYABLE, STATUSES
from webhooks import reconcile
from webhooks.events import is_sensitive, iso, redact
from webhooks.extension import webhooks_of
from webhooks.worker import WorkerPool

group = AppGroup("webhooks", help="Inspect, replay and process stored webhook events.")

LIST_FIELDS = ("company", "id", "event", "status", "attempts", "received_at", "last_error")


def _one_line(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _find(event_id: str, company: str | None) -> dict[str, Any]:
    rows = webhooks_of().inbox.get(event_id, company)
    if not rows:
        where = f" for company {company!r}" if company else ""
        raise click.ClickException(f"No stored event with id {event_id!r}{where}.")
    if len(rows) > 1:
        companies = ", ".join(row["company"] for row in rows)
        raise click.ClickException(
            f"Id {event_id!r} is used by several companies ({companies}); pass --company."
        )
    return rows[0]


@group.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only events in this state.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, help="0 for all.")
def list_command(status: str | None, as_json: bool, limit: int) -> None:
    """List stored events, newest first."""
    rows = webhooks_of().inbox.list_events(status, limit or None)
    if as_json:
        for row in rows:
            line = {name: row[name] for name in LIST_FIELDS}
            line["received_at"] = iso(row["received_at"])
            click.echo(json.dumps(line))
        return
    if not rows:
        click.echo("No events.")
        return
    table = [("RECEIVED", "COMPANY", "ID", "EVENT", "STATUS", "ATTEMPTS", "LAST ERROR")]
    table += [
        (
            iso(row["received_at"]) or "",
            row["company"],
            row["id"],
            row["event"],
            row["status"],
            str(row["attempts"]),
            _one_line(row["last_error"], 60),
        )
        for row in rows
    ]
    widths = [max(len(line[col]) for line in table) for col in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        click.echo("  ".join([*cells, line[-1]]).rstrip())


@group.command("show")
@click.argument("event_id")
@click.option("--company", help="The company, when the id is used by several.")
@click.option("--raw", is_flag=True, help="Do not mask codes and keys of user.*.verify, mfa.*, ... events.")
def show_command(event_id: str, company: str | None, raw: bool) -> None:
    """Show one stored event: state, data, last error and traceback."""
    row = _find(event_id, company)
    for name in ("company", "id", "event", "status", "attempts"):
        click.echo(f"{name}: {row[name]}")
    for name in ("received_at", "updated_at", "done_at"):
        click.echo(f"{name}: {iso(row[name]) or '-'}")
    if row["status"] == "failed":
        click.echo(f"next_attempt_at: {iso(row['due_at'])}")
    elif row["status"] == "processing":
        click.echo(f"lease_expires_at: {iso(row['due_at'])}")
    click.echo(f"last_error: {row['last_error'] or '-'}")
    data = json.loads(row["body"])["data"]
    if is_sensitive(row["event"]) and not raw:
        data = redact(data)
    click.echo("data: " + json.dumps(data, indent=2, ensure_ascii=False))
    if row["traceback"]:
        click.echo("traceback:\n" + row["traceback"].rstrip())


@group.command("replay")
@click.argument("event_id", required=False)
@click.option("--company", help="The company, when the id is used by several.")
@click.option("--dead", "all_dead", is_flag=True, help="Replay every dead event.")
def replay_command(event_id: str | None, company: str | None, all_dead: bool) -> None:
    """Put a failed, dead or done event (or, with --dead, all dead ones) back to received."""
    inbox = webhooks_of().inbox
    if all_dead == bool(event_id):
        raise click.UsageError("Give an event ID or --dead (not both).")
    if all_dead:
        rows = inbox.replay_dead()
        for row in rows:
            click.echo(f"Replayed {row['company']}/{row['id']} ({row['event']}): dead -> received.")
        click.echo(f"{len(rows)} dead event(s) put back to received.")
        return
    assert event_id is not None
    row = _find(event_id, company)
    before = inbox.replay(row["company"], event_id)
    if before is None:
        raise click.ClickException(f"No stored event with id {event_id!r}.")
    if before not in REPLAYABLE:
        raise click.ClickException(
            f"{row['company']}/{event_id} is {before}; only failed, dead or done events are replayed."
        )
    click.echo(
        f"Replayed {row['company']}/{event_id} ({row['event']}): {before} -> received, attempts reset."
    )


@group.command("reconcile")
@click.option("--since", default="24h", show_default=True, help="How far back: 30m, 24h, 7d, or seconds.")
@click.option("--dry-run", is_flag=True, help="Count what is missing; store nothing.")
@click.option("--url", "webhook_url", help="Our webhook URL as registered at Rehive (default: WEBHOOK_URL).")
def reconcile_command(since: str, dry_run: bool, webhook_url: str | None) -> None:
    """Store the deliveries Rehive made to our webhook URL since then that the inbox does not hold."""
    settings = current_app.config["SETTINGS"]
    webhook_url = webhook_url or settings.webhook_url
    if not webhook_url:
        raise click.UsageError("Set WEBHOOK_URL (the URL Rehive delivers to) or pass --url.")
    try:
        seconds = reconcile.parse_since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        counts = reconcile.reconcile_all(app, webhook_url, time.time() - seconds, dry_run=dry_run)
    except RehiveError as exc:  # the message names the path and status, never a token or secret
        raise click.ClickException(f"Rehive: {type(exc).__name__}: {exc.message}") from None
    click.echo(("Dry run: " if dry_run else "") + counts.line(dry_run) + ".")


def _require_our_company() -> None:
    """Refuse to run handlers unless Rehive confirms the admin token belongs to our company."""
    company = company_of()
    try:
        state = company.wait(None)
    except (RehiveError, ApiError) as exc:
        raise click.ClickException(
            f"Cannot check the admin token's company with Rehive ({type(exc).__name__}); no handler ran."
        ) from None
    if state != CONFIRMED:
        raise click.ClickException(
            f"REHIVE_COMPANY is {company.configured!r} but the admin token belongs to company "
            f"{company.of_admin_token!r}; no handler ran. Fix the configuration."
        )


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([dhm])$")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60}


def _age(value: str) -> float:
    match = _AGE.match(value.strip())
    if not match:
        raise click.BadParameter("use a number followed by d, h or m, e.g. 30d", param_hint="--older-than")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@group.command("prune")
@click.option("--dead", is_flag=True, required=True, help="Delete dead events (done ones age out alone).")
@click.option("--older-than", "older_than", required=True, help="Age of the last change, e.g. 30d, 12h.")
def prune_command(dead: bool, older_than: str) -> None:
    """Delete dead events whose last change is older than --older-than (they cannot be replayed after)."""
    seconds = _age(older_than)
    deleted = webhooks_of().inbox.prune_dead(time.time() - seconds)
    click.echo(f"Deleted {deleted} dead event(s) older than {older_than}.")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@group.command("work")
@click.option("--threads", type=click.IntRange(min=1), help="Default: WEBHOOK_WORKER_THREADS.")
@click.option("--drain", is_flag=True, help="Process what is due now, then exit.")
def work_command(threads: int | None, drain: bool) -> None:
    """Process events in the foreground until Ctrl-C (for WEBHOOK_WORKER=off deployments)."""
    _require_our_company()
    state = webhooks_of()
    settings = current_app.config["SETTINGS"]
    pool = WorkerPool(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        state.inbox,
        state.registry,
        threads=threads or settings.webhook_worker_threads,
    )
    if drain:
        count = pool.drain(pool.threads)
        click.echo(f"Processed {count} event(s) with {pool.threads} thread(s).")
        return
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: finish the events in hand
    pool.start()
    state.inbox.listen(pool.wake)
    click.echo(f"Processing webhooks with {pool.threads} thread(s); Ctrl-C to stop.")
    idle = threading.Event()
    try:
        while pool.running:
            idle.wait(1.0)
    except KeyboardInterrupt:
        click.echo("Stopping after the events in hand...")
    finally:
        pool.stop()
