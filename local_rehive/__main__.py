"""`python -m local_rehive`: serve the stand-in until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from local_rehive.app import DEFAULT_SEED
from local_rehive.knobs import DEFAULT_RETRY_DELAYS
from local_rehive.server import DEFAULT_HOST, DEFAULT_PORT, serve


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
        "--webhook-timeout", type=float, default=5.0, help="seconds before a delivery is cut off"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print one line with the URL once listening."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
