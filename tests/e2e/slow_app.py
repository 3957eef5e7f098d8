"""The crash test's app: the real `create_app()` plus a slow handler whose side effect is counted.

Served by gunicorn as "tests.e2e.slow_app:create_app()"; pytest never imports it, so the handler
below is registered only in those server processes.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing

from flask import Flask, current_app

from app import create_app as create_real_app
from rehive_client import RehiveClient
from webhooks import Event, on

SLOW_EVENT = "test.slow"
TABLES = (
    # The side effect, keyed by the event as an Idempotency-Key would key a Rehive call.
    "CREATE TABLE IF NOT EXISTS side_effects (company TEXT, id TEXT, pid INTEGER, PRIMARY KEY (company, id))",
    # Every completed run of the handler, applied or not: a re-run shows up here.
    "CREATE TABLE IF NOT EXISTS runs (company TEXT, id TEXT, pid INTEGER, applied INTEGER)",
)


def create_tables(path: str) -> None:
    """Create the side-effect tables next to the inbox."""
    with closing(sqlite3.connect(path, timeout=10)) as db:
        for statement in TABLES:
            db.execute(statement)
        db.commit()


@on(SLOW_EVENT)
def slow_side_effect(event: Event, client: RehiveClient) -> None:
    """Sleep, then apply the event's side effect once and record the run, in one transaction."""
    time.sleep(float(event.data.get("sleep", 0)))
    path = current_app.config["SETTINGS"].database_path
    with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        applied = db.execute(
            "INSERT INTO side_effects VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (event.company, event.id, os.getpid()),
        ).rowcount
        db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (event.company, event.id, os.getpid(), applied))
        db.execute("COMMIT")


def create_app() -> Flask:
    """Build the real app (its workers find the slow handler already registered)."""
    app = create_real_app()
    create_tables(app.config["SETTINGS"].database_path)
    return app
