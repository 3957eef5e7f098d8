"""Check 4, fuzzing: schemathesis, driven by the service's own /openapi.yaml, against the live server.

Four bounded runs with a fixed seed: the custom endpoint with a valid user token, the webhook
receiver with the webhook secret, every operation without credentials, and the manage API as an
admin. Clean means no 5xx and no answer that breaks the document (status code, content type,
headers, body schema).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from reliability import fuzz_hooks
from reliability.stack import COMPANY, Result, Run, by_status, progress

NAME = "fuzz"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
RUN_SECONDS = 180  # a bound on each run; they take a few seconds


@dataclass(frozen=True)
class Pass:
    """One schemathesis run: which operations, with which credentials, how many examples."""

    name: str
    operation: str | None
    authorization: str | None
    max_examples: int
    tag: str | None = None


def _passes(run: Run) -> list[Pass]:
    return [
        Pass("as a user", "listTransactions", f"Token {run.login('alice@demo.test')}", 150),
        Pass("as Rehive", "receiveWebhook", f"Secret {run.canaries.webhook_secret}", 150),
        Pass("no credentials", None, None, 60),
        Pass("as an admin", None, f"Token {run.login('admin@demo.test')}", 40, tag="manage"),
    ]


def _schemathesis(run: Run, fuzz: Pass, index: int) -> tuple[dict, list[dict], str]:
    """Run the CLI once; return its JSON report, its HAR entries and the tail of its output."""
    reports = run.workdir / f"schemathesis-{index}"
    shutil.rmtree(reports, ignore_errors=True)  # a kept folder may hold an earlier run's reports
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        run.shared_service().url + "/openapi.yaml",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(fuzz.max_examples),
        "--seed",
        str(run.seed),
        # No example database: one would replay earlier runs' cases and make runs differ.
        "--generation-database",
        "none",
        "--workers",
        "1",  # one worker: the same seed then gives the same cases in the same order
        "--request-timeout",
        "15",
        "--report",
        "json,har",
        "--report-dir",
        str(reports),
        # Keep every answer as received: the leak check scans them for the canaries.
        "--output-sanitize",
        "false",
    ]
    if fuzz.operation:
        command += ["--include-operation-id", fuzz.operation]
    if fuzz.tag:
        command += ["--include-tag", fuzz.tag]
    if fuzz.authorization:
        command += ["--header", f"Authorization: {fuzz.authorization}"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": fuzz_hooks.__file__,
        "RELIABILITY_COMPANY": COMPANY,
        "NO_COLOR": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter, arguments we built
        command, cwd=reports.parent, env=env, capture_output=True, text=True, timeout=RUN_SECONDS, check=False
    )
    output = (done.stdout + done.stderr)[-3000:]
    report_files = sorted(reports.glob("json-*.json"))
    har_files = sorted(reports.glob("har-*.json"))
    if not report_files or not har_files:
        raise RuntimeError(f"schemathesis wrote no report (exit {done.returncode}):\n{output}")
    run.har_files.extend(har_files)
    report = json.loads(report_files[-1].read_text())
    entries = json.loads(har_files[-1].read_text())["log"]["entries"]
    return report, entries, output


def run(run: Run) -> Result:
    """Fuzz each pass and sum the figures."""
    statuses: Counter[int] = Counter()
    generated = 0
    figures, notes = [], []
    clean = True
    for index, fuzz in enumerate(_passes(run)):
        report, entries, output = _schemathesis(run, fuzz, index)
        counts = Counter(entry["response"]["status"] for entry in entries)
        statuses.update(counts)
        cases = report["test_cases"]["generated"]
        generated += cases
        failures = report["failures"]
        errors = report["errors"]
        fives = sum(count for status, count in counts.items() if status >= 500)
        figure = (
            f"{fuzz.name}: {cases} cases, {len(entries)} requests"
            f" ({by_status(counts)}), {len(failures)} failures"
        )
        figures.append(figure)
        progress(NAME, figure)
        for failure in failures:
            notes.append(
                f"{fuzz.name}: {failure['title']} ({failure['count']}x) on {', '.join(failure['operations'])}"
            )
        for error in errors:
            notes.append(f"{fuzz.name}: error {error['title']} ({error['count']}x)")
        if fives and not failures:
            notes.append(f"{fuzz.name}: {fives} 5xx answers")
        if report["exit_code"] not in (0,) and not (failures or errors):
            notes.append(f"{fuzz.name}: schemathesis exited {report['exit_code']}: {output[-300:]}")
        clean = clean and not (failures or errors or fives) and report["exit_code"] == 0
    fives = sum(count for status, count in statuses.items() if status >= 500)
    figures.insert(
        0, f"schemathesis seed {run.seed}, {generated} cases, 5xx: {fives}, document mismatches: {len(notes)}"
    )
    return Result(NAME, "; ".join(figures), clean, tuple(notes))
