"""`python -m local_rehive`: serve the stand-in until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from local_rehive.app import DEFAULT_SEED, create_app
from local_rehive.knobs import DEFAULT_RETRY_DELAYS
from local_rehive.server import DEFAULT_HOST, DEFAULT_PORT, serve

KEEP_ALIVE_THREADS = 64  # requests in flight at once; idle kept connections wait in gunicorn's poller
KEEP_ALIVE_SECONDS = 75  # an idle connection is closed after this (nginx's default keep-alive timeout)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m local_rehive", description="A local stand-in for Rehive."
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the demo data")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every /3/ request")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share (0..1) of /3/ requests answered 500"
    )
    parser.add_argument("--throttle", action="store_true", help="answer every /3/ request 429")
    parser.add_argument(
        "--throttle-retry-after", type=int, default=2, help="Retry-After of a 429, in seconds"
    )
    parser.add_argument("--down", action="store_true", help="drop every /3/ connection without an answer")
    parser.add_argument(
        "--webhook-retry-delays",
        default=",".join(f"{delay:g}" for delay in DEFAULT_RETRY_DELAYS),
        help="seconds before each webhook retry, comma-separated, at most 7 (default %(default)s)",
    )
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="serve with gunicorn (gthread), keeping connections open between requests as Rehive does;"
        " the default (werkzeug's server) closes every connection after one answer",
    )
    parser.add_argument(
        "--webhook-timeout", type=float, default=5.0, help="seconds before a delivery is cut off"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print one line with the URL once listening."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.keep_alive:
        return serve_kept_alive(args)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        server = serve(
            args.host,
            args.port,
            seed=args.seed,
            webhook_timeout=args.webhook_timeout,
            latency_ms=args.latency_ms,
            error_rate=args.error_rate,
            throttle=args.throttle,
            throttle_retry_after=args.throttle_retry_after,
            down=args.down,
            webhook_retry_delays=args.webhook_retry_delays,
        )
    except (ValueError, OSError) as exc:  # a bad knob, or a port already in use
        print(f"local_rehive: {exc}", file=sys.stderr)
        return 2
    print(f"local_rehive listening on {server.url}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
    return 0


def serve_kept_alive(args: argparse.Namespace) -> int:
    """Serve the same app with gunicorn: one gthread worker (one platform state), HTTP/1.1 keep-alive.

    werkzeug's server answers every request with `Connection: close` (and reads whatever follows the
    body, so it cannot be taught keep-alive); gunicorn's gthread worker keeps idle connections in its
    poller, so a client's pooled connection is reused as it would be with Rehive.
    """
    from gunicorn.app.base import BaseApplication  # only this mode needs it

    options = {
        "seed": args.seed,
        "webhook_timeout": args.webhook_timeout,
        "latency_ms": args.latency_ms,
        "error_rate": args.error_rate,
        "throttle": args.throttle,
        "throttle_retry_after": args.throttle_retry_after,
        "down": args.down,
        "webhook_retry_delays": args.webhook_retry_delays,
    }
    try:
        create_app(**options)  # refuse bad knobs before gunicorn starts, as the default mode does
    except ValueError as exc:
        print(f"local_rehive: {exc}", file=sys.stderr)
        return 2

    def when_ready(server: Any) -> None:
        host, port = server.LISTENERS[0].sock.getsockname()[:2]
        print(f"local_rehive listening on http://{host}:{port}", flush=True)

    class KeptAlive(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"{args.host}:{args.port}",
                "workers": 1,  # the stand-in's state (data, knobs, courier) lives in one process
                "worker_class": "gthread",
                "threads": KEEP_ALIVE_THREADS,
                "keepalive": KEEP_ALIVE_SECONDS,
                "timeout": 120,
                "accesslog": None,
                "control_socket_disable": True,
                "when_ready": when_ready,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(**options)  # in the worker, so the courier's threads start there

    KeptAlive().run()  # returns (exit 0) after SIGTERM or SIGINT, once the worker has stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
