"""Check 5, leaks: the admin token and the webhook secret never come back out of the service.

Both canaries are set for the whole run. This check runs last: it first provokes the answers and log
lines most likely to quote a secret (a failing handler, tokens and secrets in the wrong place, a
header line gunicorn cannot parse, a scrape of /metrics and secrets sent to it), then scans every
answer the suite received (scanned as they arrived), every answer schemathesis recorded, every line of
every gunicorn log (the shared service's JSON lines decoded too, so an escaped secret is found), the
/metrics text (no label may hold the provoking event's id either), and every column of every row of
every inbox. In multi mode the canaries are the service tokens the stand-in issued and each company's
webhook secret, looked for in the multi-mode service's answers, the CLI's output, every log, /metrics
and the database files' bytes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path

from reliability import multi
from reliability.hostile import build
from reliability.stack import COMPANY, TIMEOUT, Result, Run, inbox_rows, progress

NAME = "leaks"
SETTLE_SECONDS = 10  # for the failing handler's first attempts to reach the log and the row


def _provoke(run: Run) -> int:
    """Send the requests most likely to make the service quote a secret; return how many."""
    service = run.shared_service()
    secret = run.canaries.webhook_secret
    sent = 0
    # A credit the savings handler fails on: the stand-in refuses (400) every call while it is handled,
    # a failure of the event's own making, so its error and traceback go to the log and to the row.
    run.control(error_rate=1.0, error_status=400)
    failing = {
        "id": str(uuid.UUID(int=run.seed, version=4)),
        "event": "transaction.execute",
        "company": COMPANY,
        "data": {
            "id": "tx-of-nobody",
            "tx_type": "credit",
            "status": "Complete",
            "amount": 12_345,
            "user": {"id": "no-such-user"},
            "account": "0000000099",
            "currency": {"code": "USD"},
        },
    }
    response = run.session.post(
        service.url + "/webhooks/",
        data=json.dumps(failing),
        headers={"Authorization": f"Secret {secret}", "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    run.seen.response(response)
    sent += 1
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline and not _failed_once(run.workdir / "service.sqlite3"):
        time.sleep(0.1)
    run.reset_faults()
    # Secrets in the wrong place: the webhook secret as a user token (forwarded to Rehive's /auth/,
    # refused there), the admin token as a webhook secret, either one on paths that do not exist.
    for path, authorization in [
        ("/custom/transactions/", f"Token {secret}"),
        ("/custom/transactions/", f"Secret {secret}"),
        ("/custom/transactions/", f"Token {run.canaries.admin_token}x"),
        ("/webhooks/", f"Secret {run.canaries.admin_token}"),
        ("/webhooks/", f"Token {secret}"),
        ("/nowhere/", f"Secret {secret}"),
    ]:
        method = "POST" if path == "/webhooks/" else "GET"
        response = run.session.request(
            method,
            service.url + path,
            data=b"{}" if method == "POST" else None,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
            timeout=TIMEOUT,
        )
        run.seen.response(response)
        sent += 1
    # A delivery whose Authorization line lost its colon, one with a control character in the
    # secret, and one with a header too long: gunicorn refuses each before the app sees it.
    body = json.dumps({**failing, "id": "leak-probe"}).encode()
    no_colon = build("POST", "/webhooks/", [("Content-Type", "application/json")], body).replace(
        b"\r\nConnection: close", f"\r\nAuthorization Secret {secret}\r\nConnection: close".encode()
    )
    for name, request in [
        ("no colon", no_colon),
        ("control character", build("POST", "/webhooks/", [("Authorization", f"Secret {secret}\x01")], body)),
        (
            "too long",
            build("POST", "/webhooks/", [("Authorization", f"Secret {secret}" + "x" * 9_000)], body),
        ),
    ]:
        run.raw(request, f"malformed delivery ({name})")
        sent += 1
    # /metrics: secrets offered as its bearer token are refused; the readiness probe answers too.
    for authorization in (f"Bearer {secret}", f"Bearer {run.canaries.admin_token}"):
        response = run.session.get(
            service.url + "/metrics",
            headers={"Authorization": authorization},
            timeout=TIMEOUT,
        )
        run.seen.response(response)
        sent += 1
    run.seen.response(run.session.get(service.url + "/readyz", timeout=TIMEOUT))
    return sent + 1


def _scan_metrics(run: Run) -> tuple[int, list[str]]:
    """Scrape /metrics (from loopback, so allowed) and look for the canaries and the event's id."""
    response = run.seen.response(run.session.get(run.shared_service().url + "/metrics", timeout=TIMEOUT))
    text = response.content
    leaks = [f"{name} in /metrics" for name in run.canaries.found_in(text)]
    if response.status_code != 200 or b"rehive_ext_webhook_deliveries_total" not in text:
        leaks.append(f"/metrics did not answer its metrics ({response.status_code})")
    if str(uuid.UUID(int=run.seed, version=4)).encode() in text:
        leaks.append("an event id in a /metrics label")
    return len(text.splitlines()), leaks


def _scan_logs(run: Run) -> tuple[int, int, list[str]]:
    lines, json_lines, leaks = 0, 0, []
    for path in run.logs:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            lines += 1
            found = run.canaries.found_in(line)
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    decoded = json.loads(line)
                    json_lines += 1
                    # A JSON line may escape what it quotes: scan the decoded text as well.
                    text = json.dumps(decoded, ensure_ascii=False).encode("utf-8", "replace")
                    found += [name for name in run.canaries.found_in(text) if name not in found]
            for name in found:
                leaks.append(f"{name} in {path.name} line {number}: {line[:160]!r}")
    return lines, json_lines, leaks


def _scan_databases(run: Run) -> tuple[int, int, list[str]]:
    rows = cells = 0
    leaks = []
    for path in run.databases:
        if not path.exists():
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
            tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                    rows += 1
                    for value in row:
                        cells += 1
                        blob = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
                        for name in run.canaries.found_in(blob):
                            leaks.append(f"{name} in {path.name} table {table}: {blob[:120]!r}")
    return rows, cells, leaks


def _scan_har(run: Run) -> tuple[int, list[str]]:
    answers, leaks = 0, []
    for path in run.har_files:
        for entry in json.loads(Path(path).read_text())["log"]["entries"]:
            answers += 1
            response = entry["response"]
            blob = json.dumps(response["headers"]) + (response.get("content") or {}).get("text", "")
            for name in run.canaries.found_in(blob.encode("utf-8", "replace")):
                leaks.append(
                    f"{name} in schemathesis' {response['status']} answer to {entry['request']['url'][:80]}"
                )
    return answers, leaks


def _multi(run: Run) -> tuple[str, list[str], bool]:
    """Multi mode: provoke, then look for every service token and webhook secret of both companies.

    The canaries are the tokens the stand-in gave the extension (at activation and at a rotation made
    here) and the secret the extension registered for each company; they are looked for in every
    answer of the multi-mode service, the CLI's output, every log, /metrics and the database files'
    bytes (ciphertexts only may be there).
    """
    stack = multi.stack_of(run)
    stack.rotate("demo")
    canaries = stack.canaries()
    demo_token, other_token = stack.token_of("demo"), stack.token_of("other")
    demo_secret, other_secret = stack.secrets["demo"], stack.secrets["other"]
    sent = 0
    for method, path, token, body in (
        ("GET", "/custom/transactions/", demo_token, None),  # the service user's own token, as a caller
        ("GET", "/custom/transactions/", other_secret, None),
        ("GET", "/manage/api/events/", other_token, None),
        ("GET", "/manage/api/settings/", demo_secret, None),
        ("POST", "/activate/", None, {"token": other_token}),  # a re-activation with the same token
        ("POST", "/activate/", None, {"token": other_token + "x"}),
        ("POST", "/rotate/", None, {"token": demo_secret}),
        ("POST", "/rotate/", None, {"token": [demo_token]}),
        ("POST", "/deactivate/", None, {"token": demo_token, "purge": "yes"}),
        ("POST", "/deactivate/", None, {"token": other_secret + "\u0000"}),
    ):
        stack.request(method, path, token, json=body)
        sent += 1
    for secret in (demo_token, other_secret):  # a token as a webhook secret; the other company's secret
        stack.deliver("demo", secret)
        sent += 1
    stack.request("GET", "/metrics", headers={"Authorization": f"Bearer {demo_token}"})
    # A credit of a user the stand-in does not have: the handler runs with demo's token and fails (or
    # gives up); wait until it is settled, so that whatever it logged is there to scan.
    failing, _answer = stack.deliver(
        "demo",
        demo_secret,
        {
            "id": "tx-of-nobody",
            "tx_type": "credit",
            "status": "Complete",
            "amount": 12_345,
            "user": {"id": "no-such-user"},
            "account": "0000000099",
            "currency": {"code": "USD"},
        },
    )
    sent += 2
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline and not any(
        row["id"] == failing and (row["last_error"] or row["status"] == "done") for row in stack.events()
    ):
        time.sleep(0.2)
    blobs = list(stack.answers)
    cli_runs = 0
    for args in (("companies", "list", "--json"), ("companies", "list"), ("companies", "show", "demo")):
        result = stack.cli(*args)
        cli_runs += result.returncode == 0  # a CLI that failed printed nothing worth scanning
        blobs.append((f"the output of flask {' '.join(args)}", result.stdout + result.stderr))
    metrics = stack.request("GET", "/metrics").content
    blobs.append(("/metrics of the multi-mode service", metrics))
    answer_leaks = multi.scan_blobs(canaries, blobs)
    log_leaks, lines = [], 0
    for path in run.logs:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            lines += 1
            text = line
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    text += json.dumps(json.loads(line), ensure_ascii=False).encode("utf-8", "replace")
            log_leaks += [f"{name} in {path.name} line {number}" for name in multi.found_in(canaries, text)]
    files = [
        path
        for path in (stack.database, Path(f"{stack.database}-wal"), Path(f"{stack.database}-shm"))
        if path.exists()
    ]
    stored = b"".join(path.read_bytes() for path in files)
    file_leaks = [
        f"{name} in the bytes of {', '.join(p.name for p in files)}"
        for name in multi.found_in(canaries, stored)
    ]
    leaks = answer_leaks + log_leaks + file_leaks
    figures = (
        f"multi mode: canaries {len(stack.tokens)} service tokens (activation and rotation) and"
        f" {len(stack.secrets)} webhook secrets; after {sent} provoking requests, scanned"
        f" {len(stack.answers)} answers, {cli_runs} CLI outputs, {len(metrics.splitlines())} lines of"
        f" /metrics, {lines} log lines, {len(stored):,} bytes of database files; found {len(leaks)}"
    )
    return figures, leaks, bool(stack.answers) and cli_runs == 3 and lines > 0 and len(stored) > 0


def run(run: Run) -> Result:
    """Provoke, wait for the failing handler to be logged, then scan answers, logs and rows."""
    database = run.workdir / "service.sqlite3"
    sent = _provoke(run)
    multi_figures, multi_leaks, multi_scanned = _multi(run)
    failed = _failed_once(database)
    progress(NAME, f"sent {sent} provoking requests; inbox holds {inbox_rows(database)} rows; scanning")
    metric_lines, metric_leaks = _scan_metrics(run)
    lines, json_lines, log_leaks = _scan_logs(run)
    rows, cells, row_leaks = _scan_databases(run)
    har_answers, har_leaks = _scan_har(run)
    answers = run.seen.answers + har_answers
    leaks = run.seen.leaks + har_leaks + log_leaks + row_leaks + metric_leaks + multi_leaks
    figures = (
        f"canaries: admin token {run.canaries.admin_token!r}, webhook secret canary-secret-<random>;"
        f" scanned {answers} answers ({run.seen.answers} ours, {har_answers} schemathesis'),"
        f" {lines} log lines in {len(run.logs)} logs ({json_lines} of them JSON), {metric_lines} lines"
        f" of /metrics, {rows} rows ({cells} cells) in {len(run.databases)} inboxes;"
        f" found in answers {len(run.seen.leaks) + len(har_leaks)}, in logs {len(log_leaks)},"
        f" in /metrics {len(metric_leaks)}, in rows {len(row_leaks)}; {multi_figures}"
    )
    notes = leaks[:8] + ([f"... and {len(leaks) - 8} more"] if len(leaks) > 8 else [])
    scanned = answers > 0 and lines > 0 and json_lines > 0 and metric_lines > 0 and rows > 0 and multi_scanned
    if not failed:
        notes.append("the failing handler never failed, so its error and traceback were not scanned")
    return Result(NAME, figures, not leaks and scanned and failed, tuple(notes))


def _failed_once(database: Path) -> bool:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_events WHERE last_error IS NOT NULL").fetchone()
    return bool(row[0])
