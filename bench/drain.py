"""The drain row: process stored events with a handler that makes one real upstream call each.

`python -m bench.drain --rehive URL --database PATH --events N --threads T` builds the real app with
WEBHOOK_WORKER=off (so nothing processes while the events are stored), stores N events through
`Inbox.insert`, then starts the app's own `WorkerPool` with T threads and times it until every event
is done. It prints one line, `BENCH_DRAIN <json>`, for bench/__main__.py.

With `--url postgresql://...` the store is that database instead; `--store-only` stores the events and
exits, `--no-store` drains what another process stored: several `--no-store` processes started
together are several hosts draining one inbox (each prints its start and the time it saw all done).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Sequence

from app import create_app
from devtools.stand_in import LOCAL_ADMIN_TOKEN
from rehive_client import RehiveClient
from settings import Settings
from webhooks import Event, webhooks_of

EVENT = "bench.drain"
COMPANY = "demo"
TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.1
POLL = "SELECT count(*), max(updated_at) FROM webhook_events WHERE status IN ('done', 'failed', 'dead')"


def one_upstream_call(event: Event, client: RehiveClient) -> None:
    """Make exactly one call to Rehive with the app's admin client, as a typical handler does."""
    client.get("admin/transactions/", params={"page_size": "1"})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.drain")
    parser.add_argument("--rehive", required=True, help="the stand-in's URL (its latency knob is set)")
    parser.add_argument("--database", help="a fresh SQLite file for the inbox")
    parser.add_argument("--url", help="or a fresh store's DATABASE_URL (e.g. postgresql://...)")
    parser.add_argument("--store-only", action="store_true", help="store the events, do not drain")
    parser.add_argument("--no-store", action="store_true", help="drain events another process stored")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--data", default="{}", help="the JSON object each event carries")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Store the events, drain them with the app's worker pool, print the timing."""
    args = parse_args(argv)
    settings = Settings(
        admin_token=LOCAL_ADMIN_TOKEN,
        webhook_secret=secrets.token_urlsafe(32),  # nothing is delivered over HTTP here
        rehive_api_url=args.rehive.rstrip("/") + "/3/",
        company=COMPANY,
        database_path=args.database or "",
        database_url=args.url or "",
        webhook_worker="off",
        webhook_worker_threads=args.threads,
    )
    app = create_app(settings)
    state = webhooks_of(app)
    state.registry.add(EVENT, one_upstream_call)
    data = json.loads(args.data)
    if not args.no_store:
        for n in range(args.events):
            event_id = f"drain-{n}"
            body = json.dumps({"id": event_id, "event": EVENT, "company": COMPANY, "data": data})
            state.inbox.insert(COMPANY, event_id, EVENT, body)
    if args.store_only:
        state.inbox.shutdown()
        return 0

    # Workers stamp updated_at with time.time(); the last stamp ends the run, so polling slowly here
    # (to leave the GIL to the workers) does not make the run look longer than it was.
    started = time.time()
    state.pool.start()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    settled, finished = 0, started
    while time.monotonic() < deadline:
        if hasattr(state.inbox, "connection"):  # SQLite: read when the last event was settled
            settled, last_done = state.inbox.connection().execute(POLL).fetchone()
            finished = last_done or finished
        else:  # another store: when we saw it (off by at most POLL_SECONDS)
            counts = state.inbox.counts()
            settled = sum(counts.get(status, 0) for status in ("done", "failed", "dead"))
            finished = time.time()
        if settled >= args.events:
            break
        time.sleep(POLL_SECONDS)
    state.pool.stop()
    counts = state.inbox.counts()
    state.inbox.shutdown()
    elapsed = finished - started
    result = {
        "events": args.events,
        "started": started,
        "finished": finished,
        "threads": args.threads,
        "seconds": elapsed,
        "done": counts.get("done", 0),
        "counts": counts,
        "events_per_second": counts.get("done", 0) / elapsed if elapsed > 0 else 0.0,
    }
    print("BENCH_DRAIN " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
