"""Check 2, upstream faults: whatever the stand-in does, the service answers with the documented status.

Down (connection dropped) and answering 500 give 503, slower than REHIVE_TIMEOUT gives 504, throttling
gives 429 with Retry-After; a stopped stand-in (connection refused) gives 503. Never a 500. After each
fault the very next requests answer 200 again. Half of each case's requests use a token the service
has already checked (its auth cache may answer), half a token it has never seen (so `/3/auth/` is
called and fails too); webhooks, which never call Rehive, are still acknowledged.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from reliability.stack import COMPANY, TIMEOUT, Result, Run, progress

NAME = "upstream"
REQUESTS = 12  # per case and per phase (during the fault, after it)
THROTTLE_RETRY_AFTER = 7


@dataclass(frozen=True)
class Case:
    """A fault, how to cause and end it, and what the service must answer meanwhile."""

    name: str
    expected: tuple[int, ...]  # the answers allowed while the fault lasts
    start: Callable[[Run], None]
    end: Callable[[Run], None]


def _knobs(**settings: object) -> Callable[[Run], None]:
    return lambda run: run.control(**settings)


def _restart(run: Run) -> None:
    run.start_rehive()


CASES = (
    Case("down", (503,), _knobs(down=True), Run.reset_faults),
    Case("500s", (503,), _knobs(error_rate=1.0), Run.reset_faults),
    Case("half 500s", (200, 503), _knobs(error_rate=0.5), Run.reset_faults),
    Case("slow", (504,), _knobs(latency_ms=1_500), Run.reset_faults),  # REHIVE_TIMEOUT is 1 s
    Case("slow within timeout", (200,), _knobs(latency_ms=250), Run.reset_faults),
    Case(
        "429",
        (429,),
        _knobs(throttle=True, throttle_retry_after=THROTTLE_RETRY_AFTER),
        Run.reset_faults,
    ),
    Case("stopped", (503,), Run.stop_rehive, _restart),
)


def _webhook(run: Run, rng: random.Random) -> int:
    """Deliver one event that needs no Rehive call to be stored; return the status."""
    body = {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event": "transaction.create",
        "company": COMPANY,
        "data": {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "tx_type": "credit"},
    }
    response = run.session.post(
        run.shared_service().url + "/webhooks/",
        data=json.dumps(body),
        headers={
            "Authorization": f"Secret {run.canaries.webhook_secret}",
            "Content-Type": "application/json",
        },
        timeout=TIMEOUT,
    )
    return run.seen.response(response).status_code


def _answers(run: Run, tokens: list[str]) -> list[requests.Response]:
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda token: run.get("/custom/transactions/", token), tokens))


def _tokens(run: Run, rng: random.Random, warm_up: bool = True) -> list[str]:
    """Half a warm token (already checked by the service), half never seen before."""
    warm = run.login("alice@demo.test")
    for _ in range(4 if warm_up else 0):  # likely reaches both workers' auth caches
        run.get("/custom/transactions/", warm)
    fresh = [run.fresh_token(rng.choice(("alice@demo.test", "bob@demo.test"))) for _ in range(REQUESTS // 2)]
    return [warm] * (REQUESTS - len(fresh)) + fresh


def _count(responses: list[requests.Response]) -> str:
    counts = Counter(response.status_code for response in responses)
    return "/".join(f"{counts[status]}x{status}" for status in sorted(counts))


def run(run: Run) -> Result:
    """Cause each fault, count the answers, end it, and count the answers again."""
    rng = random.Random(run.seed + 2)
    run.shared_service()
    figures, notes = [], []
    clean = True
    answers = fives = hooks_sent = hooks_ok = 0
    for case in CASES:
        tokens = _tokens(run, rng)
        try:
            case.start(run)
            during = _answers(run, tokens)
            hooks = [_webhook(run, rng) for _ in range(2)]
        finally:
            case.end(run)
        after = _answers(run, _tokens(run, rng, warm_up=False) if case.name == "stopped" else tokens)
        wrong = [r for r in during if r.status_code not in case.expected]
        bad_envelope = [r for r in during if r.status_code != 200 and not _is_error_envelope(r)]
        no_retry_after = [
            r
            for r in during
            if r.status_code == 429 and r.headers.get("Retry-After") != str(THROTTLE_RETRY_AFTER)
        ]
        not_recovered = [r for r in after if r.status_code != 200]
        hooks_refused = [status for status in hooks if status != 202]
        answers += len(during) + len(after)
        fives += sum(r.status_code == 500 for r in during + after)
        hooks_sent += len(hooks)
        hooks_ok += len(hooks) - len(hooks_refused)
        want = " or ".join(str(status) for status in case.expected)
        figures.append(f"{case.name}: {_count(during)} (want {want}), then {_count(after)}")
        if wrong:
            notes.append(f"{case.name}: {len(wrong)} answers were not {want}: {_count(wrong)}")
        if bad_envelope:
            notes.append(f"{case.name}: {len(bad_envelope)} answers not in the error envelope")
        if no_retry_after:
            notes.append(
                f"{case.name}: {len(no_retry_after)} 429s without Retry-After {THROTTLE_RETRY_AFTER}"
            )
        if not_recovered:
            notes.append(f"{case.name}: after the fault, {_count(not_recovered)} instead of 200")
        if hooks_refused:
            notes.append(f"{case.name}: webhooks answered {hooks_refused} instead of 202")
        clean = clean and not (wrong or bad_envelope or no_retry_after or not_recovered or hooks_refused)
        progress(NAME, figures[-1])
    figures.append(
        f"requests {answers}, 500s {fives}; webhooks during the faults: {hooks_ok}/{hooks_sent} 202"
    )
    return Result(NAME, "; ".join(figures), clean and not fives, tuple(notes))


def _is_error_envelope(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        response.headers.get("Content-Type", "").startswith("application/json")
        and isinstance(body, dict)
        and body.get("status") == "error"
        and isinstance(body.get("message"), str)
    )
