"""`python -m bench` (`make bench`): every row against its floor, measured in one run, as one table.

Rows (each a ratio to a floor measured in the same run, on the same machine, under the same load):

- ack: `POST /webhooks/` through gunicorn as `make run` configures it, every delivery a new event
  stored durably; floor: a bare Flask view answering 202 under the same gunicorn settings.
- custom, warm / cold: `GET /custom/transactions/` with the stand-in adding LATENCY_MS to every call,
  the `/3/auth/` answer cached (warm) or asked every time (cold); floor: the same admin query sent
  straight to the stand-in.
- naive custom: the same endpoint written the usual way (bench/naive_app.py); floor as above.
- ack, 1M done rows: the ack row with that many done events already in the inbox; floor: the ack row.
- naive webhook: `POST /webhooks/` the 2018 demo's way (bench/naive_webhook_app.py: the handler's
  Rehive call inside the request, stand-in latency on), printed beside the ack row's figures.
- drain: stored events processed by the app's worker pool, one upstream call each; floor: the ideal
  rate, threads / LATENCY_MS.
- memory: the peak RSS (VmHWM) of the service's gunicorn workers after their runs.
- ack, postgres: the ack row with DATABASE_URL on a throwaway PostgreSQL cluster; the same floor.
- drain, postgres 1 host / 2 hosts: the drain row on PostgreSQL, in one process, then in two
  processes draining one inbox together (the two/one ratio is printed; it should approach 2).

A benchmark reports; it does not assert: the exit code is 0 whenever the run itself worked.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import runpy
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from devtools.postgres import Cluster, create_database, start_cluster
from devtools.processes import ROOT, Process, service_env, start_local_rehive, start_service
from devtools.stand_in import LOCAL_ADMIN_TOKEN
from store import open_store

OUT = ROOT / "bench" / "out"
LOAD_SCRIPT = Path(__file__).with_name("load.lua")  # wrk's own request, as fast as it goes
WEBHOOK_SCRIPT = Path(__file__).with_name("webhooks.lua")  # a new delivery id per request
# The goals of issue 14, each a ratio to a floor measured in the same run.
ACK_GOAL = 0.5  # x the bare floor's req/s (p99 < 50 ms too)
ACK_POSTGRES_GOAL = 0.4
HISTORY_GOAL = 0.9  # x the empty inbox's req/s, with history_rows done rows stored
WARM_GOAL = 1.10  # x one upstream call's p50
COLD_GOAL = 2.1
DRAIN_GOAL = 0.85  # x threads / latency
GRACE_SECONDS = 3  # wrk runs this much past the webhook window, so every request sent is answered
COMPANY = "demo"
USER = "alice@demo.test"


@dataclass(frozen=True)
class Plan:
    """The fixed settings of a run; printed with the table and written to the JSON."""

    seconds: int = 10  # measured duration of each wrk row
    warmup_seconds: int = 3  # unmeasured load before each row (connections, caches, lazy imports)
    ack_connections: int = 32
    custom_connections: int = 8
    wrk_threads: int = 2  # one per core; wrk is C, so this is all it needs
    latency_ms: int = 20  # added by the stand-in to every /3/ call in the custom and drain rows
    drain_events: int = 2000
    drain_threads: int = 4  # WEBHOOK_WORKER_THREADS' default: one process's worker pool
    history_rows: int = 1_000_000  # done rows already in the inbox for the `ack, 1M done rows` row
    workers: int = 2  # read from gunicorn.conf.py (WEB_CONCURRENCY)
    threads: int = 8  # read from gunicorn.conf.py (GUNICORN_THREADS)
    worker_class: str = "gthread"
    keepalive: int = 5


@dataclass
class Load:
    """What one wrk run measured, plus the CPU the servers used meanwhile."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    statuses: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    server_cpu_seconds: float | None = None
    stand_in_cpu_seconds: float | None = None

    @property
    def rps(self) -> float:
        """Return completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Return requests that did not complete with a 2xx/3xx answer."""
        return sum(self.errors.values())

    def as_json(self) -> dict[str, Any]:
        """Return the figures, derived ones included."""
        return {**asdict(self), "rps": self.rps}


@dataclass
class Row:
    """One line of the table."""

    name: str
    measured: str
    floor: str
    ratio: str
    goal: str
    met: bool | None  # None: no goal (reported only)
    why: str = ""  # when a goal is missed, or the measurement is in doubt
    data: dict[str, Any] = field(default_factory=dict)


# -- tools -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Return wrk's path, installing Debian's package first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        sys.exit("bench: wrk is missing; install it (Debian/Ubuntu: sudo apt-get install -y wrk).")
    print("bench: wrk is missing; installing it with apt-get install -y wrk ...", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "check": False}
    if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet)
    found = shutil.which("wrk")
    if not found:
        sys.exit("bench: apt-get could not install wrk.")
    return found


def wrk_version(wrk: str) -> str:
    """Return wrk's version line (wrk prints it with its usage and exits 1)."""
    text = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"wrk (\S+)", text)
    return match.group(1) if match else "unknown"


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: int,
    threads: int,
    headers: Sequence[str] = (),
    webhook: tuple[str, str] | None = None,
    watch: Sequence[Process] = (),
    stand_in: Process | None = None,
) -> Load:
    """Drive `url` with wrk for `seconds` and return what it measured.

    With `webhook=(prefix, data)`, POST a new delivery per request for `seconds`, then let the last
    answers arrive (GRACE_SECONDS) so that what was sent and what was answered can be compared.
    """
    duration = seconds + GRACE_SECONDS if webhook else seconds
    command = [wrk, "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration}s"]
    command += ["--timeout", "10s", "-s", str(WEBHOOK_SCRIPT if webhook else LOAD_SCRIPT)]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    if webhook:
        command += ["--", webhook[0], str(seconds), webhook[1]]
    cpu_before = sum(cpu_seconds(process) for process in watch)
    stand_in_before = cpu_seconds(stand_in) if stand_in else 0.0
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    cpu_after = sum(cpu_seconds(process) for process in watch)
    stand_in_after = cpu_seconds(stand_in) if stand_in else 0.0
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-2000:]}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    latency = result["latency_us"]
    # The webhook script times its own window (first request to last answer); wrk's duration would
    # count the idle grace period too.
    window = result["window_ms"] / 1000 if webhook and result["window_ms"] > 0 else 0.0
    return Load(
        requests=result["requests"],
        seconds=window or result["duration_us"] / 1e6,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        errors=result["errors"],
        statuses=result["statuses"],
        sent=result["sent"],
        server_cpu_seconds=cpu_after - cpu_before if watch else None,
        stand_in_cpu_seconds=stand_in_after - stand_in_before if stand_in else None,
    )


# -- processes ---------------------------------------------------------------------------------


def gunicorn_settings() -> dict[str, Any]:
    """Read workers, threads and worker class from gunicorn.conf.py, as `make run` does."""
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return {
        "workers": int(conf["workers"]),
        "threads": int(conf["threads"]),
        "worker_class": str(conf["worker_class"]),
        "keepalive": int(conf.get("keepalive", 2)),
    }


def children(pid: int) -> list[int]:
    """Return the pids whose parent is `pid` (gunicorn's workers, for its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The command name may hold spaces and parentheses; the fields after the last ')' do not.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cpu_of(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def cpu_seconds(process: Process) -> float:
    """Return the CPU time (user + system) a server and its workers have used so far."""
    pid = process.proc.pid
    return _cpu_of(pid) + sum(_cpu_of(child) for child in children(pid))


def peak_rss_mib(process: Process) -> list[float]:
    """Return each gunicorn worker's VmHWM (peak resident memory), in MiB."""
    peaks = []
    for child in children(process.proc.pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return sorted(peaks, reverse=True)


class Servers:
    """Start what a row needs and stop all of it when the run ends, even on an error or Ctrl-C."""

    def __init__(self, plan: Plan, rehive_url: str, secret: str) -> None:
        self.plan = plan
        self.rehive_url = rehive_url
        self.secret = secret
        self.started: list[Process] = []

    def service(
        self, name: str, app: str = "app:create_app()", *, fresh: bool = True, **settings: str
    ) -> Process:
        """Start gunicorn serving `app` on a free loopback port, on a fresh inbox unless not `fresh`."""
        database = OUT / f"{name}.sqlite3"
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            if fresh:
                path.unlink(missing_ok=True)
        env = service_env(
            os.environ,
            REHIVE_API_URL=self.rehive_url + "/3/",
            REHIVE_ADMIN_TOKEN=LOCAL_ADMIN_TOKEN,
            REHIVE_COMPANY=COMPANY,
            REHIVE_WEBHOOK_SECRET=self.secret,
            **({"DATABASE_PATH": str(database)} if "DATABASE_URL" not in settings else {}),
            CUSTOM_RATE_LIMIT="1000000000/minute",  # wrk sends one user's token as fast as it can
            **settings,
        )
        process = start_service(
            env,
            workers=self.plan.workers,
            threads=self.plan.threads,
            app=app,
            log_path=OUT / "logs" / f"{name}.log",
        )
        process.extra["database"] = database
        self.started.append(process)
        return process

    def stop(self, process: Process) -> None:
        """Stop one server now (so that it uses no CPU during the next rows)."""
        process.stop()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        """Stop everything still running."""
        while self.started:
            self.stop(self.started[-1])


@contextlib.contextmanager
def stand_in() -> Iterator[Process]:
    """Start the local Rehive stand-in and stop it afterwards.

    With `--keep-alive` (gunicorn, HTTP/1.1), as Rehive does: a client's pooled connection is reused,
    so neither the floors nor the service pay a new TCP connection per upstream call.
    """
    process = start_local_rehive(("--keep-alive",), log_path=OUT / "logs" / "local_rehive.log")
    try:
        yield process
    finally:
        process.stop()


def set_latency(rehive_url: str, latency_ms: int) -> None:
    """Set the stand-in's added latency through its control API."""
    response = requests.post(f"{rehive_url}/_control/", json={"latency_ms": latency_ms}, timeout=10)
    response.raise_for_status()


# -- rows ----------------------------------------------------------------------------------------


def fmt_load(load: Load) -> str:
    """Return `req/s, p50, p99` as the table shows them."""
    return f"{load.rps:7.0f} req/s  p50 {load.p50_ms:6.2f} ms  p99 {load.p99_ms:6.2f} ms"


def stored_rows(database: Path, prefix: str) -> int:
    """Return how many events with ids starting `prefix-` the inbox holds."""
    query = "SELECT count(*) FROM webhook_events WHERE id LIKE ?"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        (count,) = db.execute(query, (f"{prefix}-%",)).fetchone()
    return count


def settled_rows(database: Path, prefix: str) -> int:
    """Count the stored rows once the count stops moving (a late request may still be landing)."""
    last, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        count = stored_rows(database, prefix)
        if count == last:
            return count
        last = count
        time.sleep(0.5)
    return last


def check_storage(load: Load, rows: int) -> tuple[bool, str]:
    """Compare rows stored with 202s: every event acknowledged is stored, and nothing else is."""
    acked = load.statuses.get("202", 0)
    unanswered = load.sent - sum(load.statuses.values())  # cut by wrk's deadline (should be 0)
    others = {status: n for status, n in load.statuses.items() if status != "202"}
    text = f"inbox rows {rows}, 202 answers {acked}"
    if unanswered:
        text += f", {unanswered} sent but not answered before wrk's deadline"
    if others:
        text += f", other answers {others}"
    # A request still unanswered at wrk's deadline may or may not have been stored; none should be.
    ok = not others and acked <= rows <= acked + unanswered
    return ok, text + (" (equal)" if ok and rows == acked else "")


def ack_rows(
    wrk: str, plan: Plan, servers: Servers, data: str, notes: list[str]
) -> tuple[Row, Process, Load]:
    """Measure the bare floor, then the service; return the ack row, the (running) service, the floor."""
    headers = ("Content-Type: application/json", f"Authorization: Secret {servers.secret}")

    def drive(process: Process, prefix: str, seconds: int) -> Load:
        return run_wrk(
            wrk,
            process.url + "/webhooks/",
            connections=plan.ack_connections,
            seconds=seconds,
            threads=plan.wrk_threads,
            headers=headers,
            webhook=(prefix, data),
            watch=(process,),
        )

    bare = servers.service("bare", app="bench.bare_app:create_app()")
    drive(bare, "warm", plan.warmup_seconds)
    floor = drive(bare, "run", plan.seconds)
    bare_rss = peak_rss_mib(bare)
    servers.stop(bare)

    service = servers.service("service")
    drive(service, "warm", plan.warmup_seconds)
    load = drive(service, "run", plan.seconds)
    rows = settled_rows(service.extra["database"], "run")
    stored_ok, stored_text = check_storage(load, rows)
    notes.append(f"ack: {stored_text}{'' if stored_ok else ' MISMATCH'}.")

    ratio = load.rps / floor.rps if floor.rps else 0.0
    why = []
    if ratio < ACK_GOAL:
        why.append(f"throughput {ratio:.3f} of the floor < {ACK_GOAL}")
    if load.p99_ms >= 50:
        why.append(f"p99 {load.p99_ms:.1f} ms >= 50 ms")
    if not stored_ok:
        why.append("inbox rows do not match the 202s: " + stored_text)
    if load.failed or floor.failed:
        why.append(f"errors: service {load.errors}, floor {floor.errors}")
    row = Row(
        name="ack",
        measured=fmt_load(load),
        floor=fmt_load(floor),
        ratio=f"{ratio:.3f} x req/s",
        goal=f">= {ACK_GOAL} x req/s, p99 < 50 ms",
        met=not why,
        why="; ".join(why),
        data={
            "service": load.as_json(),
            "floor": floor.as_json(),
            "ratio_rps": ratio,
            "stored_rows": rows,
            "storage_ok": stored_ok,
            "floor_peak_rss_mib": bare_rss,
            "cpu_ms_per_request": _cpu_per_request(load),
            "floor_cpu_ms_per_request": _cpu_per_request(floor),
        },
    )
    return row, service, floor


def ack_postgres_row(wrk: str, plan: Plan, servers: Servers, data: str, floor: Load, url: str) -> Row:
    """The ack row with the inbox on PostgreSQL, against the same bare floor."""
    headers = ("Content-Type: application/json", f"Authorization: Secret {servers.secret}")
    service = servers.service("service-pg", DATABASE_URL=url)
    common = {
        "connections": plan.ack_connections,
        "threads": plan.wrk_threads,
        "headers": headers,
        "watch": (service,),
    }
    run_wrk(wrk, service.url + "/webhooks/", seconds=plan.warmup_seconds, webhook=("warm", data), **common)
    load = run_wrk(wrk, service.url + "/webhooks/", seconds=plan.seconds, webhook=("run", data), **common)
    servers.stop(service)
    store = open_store(url, listen=False, pool_size=1)
    try:
        rows, last = 0, 0
        while batch := store.export_rows(last, 5000):
            rows += sum(row["id"].startswith("run-") for row in batch)
            last = batch[-1]["seq"]
    finally:
        store.shutdown()
    stored_ok, stored_text = check_storage(load, rows)
    ratio = load.rps / floor.rps if floor.rps else 0.0
    why = []
    if ratio < ACK_POSTGRES_GOAL:
        why.append(f"throughput {ratio:.3f} of the floor < {ACK_POSTGRES_GOAL}")
    if load.p99_ms >= 50:
        why.append(f"p99 {load.p99_ms:.1f} ms >= 50 ms")
    if not stored_ok:
        why.append("inbox rows do not match the 202s: " + stored_text)
    if load.failed:
        why.append(f"errors: {load.errors}")
    return Row(
        name="ack, postgres",
        measured=fmt_load(load),
        floor=fmt_load(floor),
        ratio=f"{ratio:.3f} x req/s",
        goal=f">= {ACK_POSTGRES_GOAL} x req/s, p99 < 50 ms",
        met=not why,
        why="; ".join(why),
        data={
            "service": load.as_json(),
            "ratio_rps": ratio,
            "stored_rows": rows,
            "storage_ok": stored_ok,
            "storage": stored_text,
            "cpu_ms_per_request": _cpu_per_request(load),
        },
    )


def build_history(database: Path, rows: int) -> float:
    """Create the inbox at `database` holding `rows` done events, in one statement; return the seconds."""
    started = time.monotonic()
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)
    store = open_store(f"sqlite:///{database}")
    store.upgrade()
    store.shutdown()
    now = time.time()  # done just now: the retention pass of the service deletes none of them
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA synchronous=OFF")  # a throwaway file: building it is not what is measured
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO webhook_events (company, id, event, body, status, attempts, received_at,"
            " updated_at, done_at)"
            " SELECT ?, 'old-' || i, 'transaction.create', '{}', 'done', 1, ?, ?, ? FROM n",
            (rows, COMPANY, now, now, now),
        )
        db.commit()
    return time.monotonic() - started


def history_row(wrk: str, plan: Plan, servers: Servers, data: str, empty: Row) -> Row:
    """The ack row again, with `history_rows` done rows already stored: the cost must not grow."""
    name = "history"
    built = build_history(OUT / f"{name}.sqlite3", plan.history_rows)
    service = servers.service(name, fresh=False)
    common = {
        "connections": plan.ack_connections,
        "threads": plan.wrk_threads,
        "headers": ("Content-Type: application/json", f"Authorization: Secret {servers.secret}"),
        "watch": (service,),
    }
    run_wrk(wrk, service.url + "/webhooks/", seconds=plan.warmup_seconds, webhook=("warm", data), **common)
    load = run_wrk(wrk, service.url + "/webhooks/", seconds=plan.seconds, webhook=("run", data), **common)
    rows = settled_rows(service.extra["database"], "run")
    servers.stop(service)
    stored_ok, stored_text = check_storage(load, rows)
    base = empty.data["service"]["rps"]
    ratio = load.rps / base if base else 0.0
    why = []
    if ratio < HISTORY_GOAL:
        why.append(f"throughput {ratio:.3f} of the empty inbox's < {HISTORY_GOAL}")
    if not stored_ok:
        why.append("inbox rows do not match the 202s: " + stored_text)
    if load.failed:
        why.append(f"errors: {load.errors}")
    empty_load = empty.data["service"]
    return Row(
        name=f"ack, {plan.history_rows:,} done rows",
        measured=fmt_load(load),
        floor=(
            f"{empty_load['rps']:7.0f} req/s  p50 {empty_load['p50_ms']:6.2f} ms"
            f"  p99 {empty_load['p99_ms']:6.2f} ms (ack, empty inbox)"
        ),
        ratio=f"{ratio:.3f} x req/s",
        goal=f">= {HISTORY_GOAL} x empty inbox's req/s",
        met=not why,
        why="; ".join(why),
        data={"service": load.as_json(), "ratio_rps": ratio, "storage": stored_text, "build_seconds": built},
    )


def naive_webhook_row(wrk: str, plan: Plan, servers: Servers, data: str, ours: Row) -> Row:
    """Drive bench/naive_webhook_app.py as the ack row drives the service; print it beside ours."""
    service = servers.service("naive-webhook", app="bench.naive_webhook_app:create_app()")
    common = {
        "connections": plan.ack_connections,
        "threads": plan.wrk_threads,
        "headers": ("Content-Type: application/json", f"Authorization: Secret {servers.secret}"),
        "watch": (service,),
    }
    run_wrk(wrk, service.url + "/webhooks/", seconds=plan.warmup_seconds, webhook=("warm", data), **common)
    load = run_wrk(wrk, service.url + "/webhooks/", seconds=plan.seconds, webhook=("run", data), **common)
    servers.stop(service)
    our = ours.data["service"]
    rps_ratio = load.rps / our["rps"] if our["rps"] else 0.0
    p50_ratio = load.p50_ms / our["p50_ms"] if our["p50_ms"] else 0.0
    return Row(
        name="naive webhook",
        measured=fmt_load(load),
        floor=f"{our['rps']:7.0f} req/s  p50 {our['p50_ms']:6.2f} ms  p99 {our['p99_ms']:6.2f} ms (ours)",
        ratio=f"{rps_ratio:.3f} x our req/s, {p50_ratio:.1f} x our p50",
        goal="(comparison)",
        met=None,
        why=f"errors {load.errors}" if load.failed else "",
        data={"load": load.as_json(), "ratio_rps": rps_ratio, "ratio_p50": p50_ratio},
    )


def _drain_command(plan: Plan, rehive_url: str, data: str, url: str, *flags: str) -> list[str]:
    sizes = ["--events", str(plan.drain_events), "--threads", str(plan.drain_threads), "--data", data]
    return [sys.executable, "-m", "bench.drain", "--rehive", rehive_url, "--url", url, *flags, *sizes]


def drain_postgres_row(plan: Plan, rehive_url: str, data: str, cluster: Cluster, hosts: int) -> Row:
    """Store the drain events in a fresh Postgres database, then drain them with `hosts` processes."""
    url = create_database(cluster, f"drain_{hosts}")
    log_path = OUT / "logs" / f"drain-pg-{hosts}.log"
    with open(log_path, "wb") as log:
        stored = subprocess.run(
            _drain_command(plan, rehive_url, data, url, "--store-only"), cwd=ROOT, stderr=log, timeout=300
        )
        if stored.returncode != 0:
            raise RuntimeError(f"bench.drain --store-only failed; see {log_path}")
        drainers = [
            subprocess.Popen(
                _drain_command(plan, rehive_url, data, url, "--no-store"),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            for _ in range(hosts)
        ]
        outputs = [drainer.communicate(timeout=300)[0].decode() for drainer in drainers]
    results = []
    for drainer, output in zip(drainers, outputs, strict=True):
        line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_DRAIN ")), None)
        if drainer.returncode != 0 or line is None:
            raise RuntimeError(f"bench.drain failed ({drainer.returncode}); see {log_path}")
        results.append(json.loads(line.removeprefix("BENCH_DRAIN ")))
    seconds = max(r["finished"] for r in results) - min(r["started"] for r in results)
    done = min(r["done"] for r in results)
    rate = done / seconds if seconds > 0 else 0.0
    ideal = hosts * plan.drain_threads / (plan.latency_ms / 1000)
    ratio = rate / ideal
    why = []
    if done != plan.drain_events:
        why.append(f"only {done} of {plan.drain_events} done: {results[0]['counts']}")
    return Row(
        name=f"drain, postgres {hosts} host{'s' if hosts > 1 else ''}",
        measured=f"{rate:7.0f} ev/s   {done} events in {seconds:.2f} s",
        floor=f"{ideal:7.0f} ev/s   {hosts} x {plan.drain_threads} threads / {plan.latency_ms} ms",
        ratio=f"{ratio:.3f} x ideal",
        goal="reported",
        met=None if not why else False,
        why="; ".join(why),
        data={"events_per_second": rate, "seconds": seconds, "hosts": hosts, "per_process": results},
    )


def _cpu_per_request(load: Load) -> float | None:
    if load.server_cpu_seconds is None or not load.requests:
        return None
    return load.server_cpu_seconds / load.requests * 1000


def custom_loads(
    wrk: str, plan: Plan, url: str, headers: Sequence[str], watch: Process | None, rehive: Process
) -> Load:
    """Warm up, then measure one custom-endpoint row (or its floor) at the custom concurrency."""
    common = {
        "connections": plan.custom_connections,
        "threads": plan.wrk_threads,
        "headers": headers,
        "stand_in": rehive,
        "watch": (watch,) if watch else (),
    }
    run_wrk(wrk, url, seconds=plan.warmup_seconds, **common)
    return run_wrk(wrk, url, seconds=plan.seconds, **common)


def custom_row(name: str, load: Load, floor: Load, goal: float | None) -> Row:
    """Build a custom-endpoint row: p50 as a ratio to the floor's p50."""
    ratio = load.p50_ms / floor.p50_ms if floor.p50_ms else 0.0
    why = []
    if goal is not None and ratio > goal:
        why.append(f"p50 {ratio:.3f} x the floor > {goal}")
    if load.failed:
        why.append(f"errors {load.errors}")
    return Row(
        name=name,
        measured=fmt_load(load),
        floor=fmt_load(floor),
        ratio=f"{ratio:.3f} x p50",
        goal=f"p50 <= {goal} x floor" if goal is not None else "(comparison)",
        met=(not why) if goal is not None else None,
        why="; ".join(why),
        data={
            "load": load.as_json(),
            "floor": floor.as_json(),
            "ratio_p50": ratio,
            "cpu_ms_per_request": _cpu_per_request(load),
        },
    )


def drain_row(plan: Plan, rehive_url: str, data: str) -> Row:
    """Run bench.drain in its own process and compare its rate with threads / latency."""
    database = OUT / "drain.sqlite3"
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.drain", "--rehive", rehive_url, "--database", str(database)]
    command += ["--events", str(plan.drain_events), "--threads", str(plan.drain_threads), "--data", data]
    with open(OUT / "logs" / "drain.log", "wb") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, timeout=300, check=False)
    line = next((ln for ln in done.stdout.decode().splitlines() if ln.startswith("BENCH_DRAIN ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"bench.drain failed ({done.returncode}); see {OUT / 'logs' / 'drain.log'}")
    result = json.loads(line.removeprefix("BENCH_DRAIN "))
    ideal = plan.drain_threads / (plan.latency_ms / 1000)
    rate = result["events_per_second"]
    ratio = rate / ideal
    why = []
    if ratio < DRAIN_GOAL:
        why.append(f"{ratio:.3f} of ideal < {DRAIN_GOAL}")
    if result["done"] != plan.drain_events:
        why.append(f"only {result['done']} of {plan.drain_events} done: {result['counts']}")
    return Row(
        name="drain",
        measured=f"{rate:7.0f} ev/s   {result['done']} events in {result['seconds']:.2f} s",
        floor=f"{ideal:7.0f} ev/s   {plan.drain_threads} threads / {plan.latency_ms} ms",
        ratio=f"{ratio:.3f} x ideal",
        goal=f">= {DRAIN_GOAL} x ideal",
        met=not why,
        why="; ".join(why),
        data={**result, "ideal_events_per_second": ideal, "ratio": ratio},
    )


def memory_row(peaks: dict[str, list[float]], bare: list[float]) -> Row:
    """Report the service workers' peak RSS after their runs, next to the bare Flask worker's."""
    top = max((mib for values in peaks.values() for mib in values), default=0.0)
    bare_top = max(bare, default=0.0)
    where = ", ".join(f"{name} {max(values):.1f}" for name, values in peaks.items() if values)
    return Row(
        name="memory",
        measured=f"VmHWM {top:6.1f} MiB  (max worker: {where})",
        floor=f"bare Flask worker {bare_top:.1f} MiB",
        ratio=f"{top / bare_top:.2f} x" if bare_top else "-",
        goal="reported",
        met=None,
        data={"peak_rss_mib": peaks, "bare_peak_rss_mib": bare},
    )


# -- the run -------------------------------------------------------------------------------------


def machine(wrk: str) -> dict[str, str]:
    """Describe the machine and the versions measured."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = model.group(1).strip() if model else cpu
    info = {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for package in ("Flask", "Werkzeug", "gunicorn", "requests"):
        info[package] = metadata.version(package)
    info["wrk"] = wrk_version(wrk)
    return info


def sample_transaction(rehive_url: str) -> str:
    """Return one of the stand-in's extended admin transactions as compact JSON (a real event's data)."""
    response = requests.get(f"{rehive_url}/_control/transactions", params={"company": COMPANY}, timeout=10)
    response.raise_for_status()
    return json.dumps(response.json()[0], separators=(",", ":"))


def user_token_and_id(rehive_url: str) -> tuple[str, str]:
    """Issue a never-expiring token for the demo user and return it with the user's id."""
    response = requests.post(
        f"{rehive_url}/_control/tokens", json={"company": COMPANY, "user": USER}, timeout=10
    )
    response.raise_for_status()
    body = response.json()
    return body["token"], body["user"]


def measure(wrk: str, plan: Plan) -> tuple[list[Row], list[str]]:
    """Run every row; return the table's rows and the notes printed under it."""
    rows: list[Row] = []
    notes: list[str] = []
    with stand_in() as rehive:
        servers = Servers(plan, rehive.url, secrets.token_urlsafe(32))
        try:
            data = sample_transaction(rehive.url)
            token, user_id = user_token_and_id(rehive.url)
            peaks: dict[str, list[float]] = {}

            print("bench: ack (bare floor, then the service) ...", flush=True)
            ack, service, ack_floor = ack_rows(wrk, plan, servers, data, notes)
            rows.append(ack)

            print(f"bench: ack with {plan.history_rows:,} done rows in the inbox ...", flush=True)
            rows.append(history_row(wrk, plan, servers, data, ack))

            set_latency(rehive.url, plan.latency_ms)
            admin_headers = (f"Authorization: Token {LOCAL_ADMIN_TOKEN}",)
            user_headers = (f"Authorization: Token {token}",)
            floor_url = f"{rehive.url}/3/admin/transactions/?user={user_id}"
            print("bench: custom floor (the stand-in directly) ...", flush=True)
            idle = run_wrk(
                wrk, floor_url, connections=1, seconds=plan.warmup_seconds, threads=1, headers=admin_headers
            )
            floor = custom_loads(wrk, plan, floor_url, admin_headers, None, rehive)

            print("bench: custom, warm ...", flush=True)
            path = "/custom/transactions/"
            warm = custom_loads(wrk, plan, service.url + path, user_headers, service, rehive)
            peaks["service"] = peak_rss_mib(service)
            servers.stop(service)

            print("bench: custom, cold ...", flush=True)
            cold_service = servers.service("cold", AUTH_CACHE_SECONDS="0")
            cold = custom_loads(wrk, plan, cold_service.url + path, user_headers, cold_service, rehive)
            peaks["cold"] = peak_rss_mib(cold_service)
            servers.stop(cold_service)

            print("bench: naive ...", flush=True)
            naive_service = servers.service("naive", app="bench.naive_app:create_app()")
            naive = custom_loads(wrk, plan, naive_service.url + path, user_headers, naive_service, rehive)
            servers.stop(naive_service)

            print("bench: custom floor again (drift check) ...", flush=True)
            again = run_wrk(
                wrk,
                floor_url,
                connections=plan.custom_connections,
                seconds=plan.seconds,
                threads=plan.wrk_threads,
                headers=admin_headers,
            )
            rows.append(custom_row("custom, warm", warm, floor, WARM_GOAL))
            rows.append(custom_row("custom, cold", cold, floor, COLD_GOAL))
            rows.append(custom_row("naive custom", naive, floor, None))

            print("bench: naive webhook (the handler's Rehive call inside the request) ...", flush=True)
            rows.append(naive_webhook_row(wrk, plan, servers, data, ack))

            print("bench: drain ...", flush=True)
            call_url = f"{rehive.url}/3/admin/transactions/?page_size=1"
            call = run_wrk(
                wrk,
                call_url,
                connections=plan.drain_threads,
                seconds=plan.warmup_seconds,
                threads=min(plan.wrk_threads, plan.drain_threads),
                headers=admin_headers,
            )
            drain = drain_row(plan, rehive.url, data)
            rows.append(drain)
            rows.append(memory_row(peaks, ack.data["floor_peak_rss_mib"]))

            print("bench: postgres (a throwaway cluster) ...", flush=True)
            cluster = start_cluster()
            try:
                set_latency(rehive.url, 0)
                print("bench: ack, postgres ...", flush=True)
                ack_pg = ack_postgres_row(
                    wrk, plan, servers, data, ack_floor, create_database(cluster, "ack")
                )
                rows.append(ack_pg)
                notes.append(f"ack, postgres: {ack_pg.data['storage']}.")
                set_latency(rehive.url, plan.latency_ms)
                print("bench: drain, postgres, one host then two ...", flush=True)
                one = drain_postgres_row(plan, rehive.url, data, cluster, 1)
                two = drain_postgres_row(plan, rehive.url, data, cluster, 2)
                rows += [one, two]
                scale = two.data["events_per_second"] / one.data["events_per_second"]
                two.data["two_over_one"] = scale
                notes.append(
                    f"drain on postgres: two hosts / one host = {scale:.2f} (each host {plan.drain_threads}"
                    f" worker threads, {plan.latency_ms} ms per handler; 2.00 would be perfect scaling)."
                )
            finally:
                cluster.stop()

            drift = again.p50_ms / floor.p50_ms - 1 if floor.p50_ms else 0.0
            notes.append(
                f"custom floor p50: {idle.p50_ms:.2f} ms at 1 connection; {floor.p50_ms:.2f} ms at"
                f" {plan.custom_connections} before the custom rows, {again.p50_ms:.2f} ms after them"
                f" (drift {drift:+.1%}{'; the machine was not quiet, re-run' if abs(drift) > 0.05 else ''})."
            )
            stand_in_share = {
                name: load.stand_in_cpu_seconds / load.seconds
                for name, load in (("floor", floor), ("warm", warm), ("cold", cold), ("naive", naive))
                if load.stand_in_cpu_seconds is not None
            }
            notes.append(
                "stand-in CPU (one process, one GIL: 1.00 would be saturated): "
                + ", ".join(f"{name} {share:.2f}" for name, share in stand_in_share.items())
                + "; it is served with keep-alive (gunicorn gthread, as Rehive keeps connections open), so"
                " the floor, the service and the drain reuse their connections; only the naive apps"
                " open one per call (`Connection: close`)."
            )
            possible = plan.drain_threads / (call.p50_ms / 1000)
            drained = drain.data["events_per_second"]
            notes.append(
                f"drain: the handler's call alone (wrk straight to the stand-in, {plan.drain_threads}"
                f" connections) takes p50 {call.p50_ms:.2f} ms, so {plan.drain_threads} threads could do"
                f" at most ~{possible:.0f} ev/s against this stand-in; the pool did"
                f" {drained:.0f} ({drained / possible:.2f} of that)."
            )
            notes.append(
                "service CPU per request: "
                + ", ".join(
                    f"{name} {value:.2f} ms"
                    for name, value in (
                        ("ack", ack.data["cpu_ms_per_request"]),
                        ("ack floor", ack.data["floor_cpu_ms_per_request"]),
                        ("warm", _cpu_per_request(warm)),
                        ("cold", _cpu_per_request(cold)),
                        ("naive", _cpu_per_request(naive)),
                    )
                    if value is not None
                )
                + " (all gunicorn processes, user + system)."
            )
            extra = {"idle": idle.as_json(), "after": again.as_json(), "drift": drift}
            for row in rows[1:4]:
                row.data["floor_checks"] = extra
            drain.data["handler_call_alone"] = call.as_json()
        finally:
            servers.stop_all()
    return rows, notes


def render(rows: list[Row], info: dict[str, str], plan: Plan, notes: list[str], seconds: float) -> str:
    """Return the report: machine, settings, the table, the verdict and the notes."""
    header = ("row", "measured", "floor", "ratio", "goal", "met?")
    cells = [header] + [
        (row.name, row.measured, row.floor, row.ratio, row.goal, _met(row.met)) for row in rows
    ]
    widths = [max(len(line[col]) for line in cells) for col in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return (
            "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    machine_line = ", ".join(f"{key} {value}" for key, value in info.items())
    lines = [
        f"machine: {machine_line}",
        (
            f"settings: gunicorn {plan.workers} {plan.worker_class} workers x {plan.threads} threads"
            f" (gunicorn.conf.py, keepalive {plan.keepalive} s, access log on); wrk {plan.wrk_threads}"
            f" threads; {plan.seconds} s per row after {plan.warmup_seconds} s of warm-up; ack at"
            f" {plan.ack_connections} connections, a new event id per request, WEBHOOK_WORKER=thread"
            f" (no handler for the event); custom rows at {plan.custom_connections} connections, one"
            f" user token, stand-in latency {plan.latency_ms} ms, warm AUTH_CACHE_SECONDS=10, cold 0;"
            f" drain {plan.drain_events} events, {plan.drain_threads} worker threads, one GET per event;"
            f" stand-in served with keep-alive; naive webhook at {plan.ack_connections} connections,"
            f" {plan.latency_ms} ms per Rehive call"
        ),
        "",
        line(header),
        rule,
        *(line(values) for values in cells[1:]),
        "",
    ]
    missed = [row for row in rows if row.met is False]
    if missed:
        lines.append("GOALS MISSED:")
        lines += [f"  - {row.name}: {row.why}" for row in missed]
    else:
        lines.append("All goals met.")
    lines += [f"note: {note}" for note in notes]
    lines.append(f"whole run: {seconds:.0f} s; JSON: {OUT / 'results.json'}")
    return "\n".join(lines)


def _met(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def main() -> int:
    """Run the benchmark, print the table, write bench/out/results.json; 0 unless the run broke."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: servers are stopped
    started = time.monotonic()
    wrk = ensure_wrk()
    plan = Plan(**gunicorn_settings())
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("logs/*.log"):
        old.unlink()
    info = machine(wrk)
    rows, notes = measure(wrk, plan)
    seconds = time.monotonic() - started
    print()
    print(render(rows, info, plan, notes, seconds))
    result = {
        "machine": info,
        "settings": asdict(plan),
        "rows": [asdict(row) for row in rows],
        "goals_missed": [row.name for row in rows if row.met is False],
        "notes": notes,
        "seconds": seconds,
    }
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
