"""How `make demo` prints and checks its steps (both walks use it)."""

from __future__ import annotations

import sys


class DemoFailed(Exception):
    """A step did not do what the demo says it does."""


def mask(token: str) -> str:
    """Show enough of a token to recognise it, never all of it."""
    return token[:4] + "…" + token[-2:] if len(token) > 8 else "…"


BOLD, RED, GREEN, PLAIN = ("\033[1m", "\033[31m", "\033[32m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def step(label: str, text: str) -> None:
    """Print a step heading."""
    print(f"\n{BOLD}{label}{PLAIN} {text}", flush=True)


def say(text: str) -> None:
    """Print a line of a step."""
    print(f"   {text}", flush=True)


def check(condition: bool, failure: str) -> None:
    """Stop the demo with `failure` unless `condition` holds."""
    if not condition:
        raise DemoFailed(failure)


def money(amount: int, currency: dict) -> str:
    """Format an amount in the smallest unit as Rehive's clients do."""
    divisibility = currency.get("divisibility", 2)
    return f"{amount / 10**divisibility:,.{divisibility}f} {currency.get('code', '')}"
