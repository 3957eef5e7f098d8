"""Start the service and the local Rehive stand-in as real processes on loopback, and stop them.

Used by `make run` (local mode), `make demo`, the end-to-end tests and the benchmarks, so that all of
them start things the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
_LISTENING = re.compile(r"local_rehive listening on (http://\S+)")


def wait_for(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (requests.RequestException, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def listening_socket(port: int = 0) -> socket.socket:
    """Bind a loopback socket and listen; port 0 picks a free port that no one else can take."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


@dataclass
class Process:
    """A server we started: its process, its URL, and how to stop it."""

    proc: subprocess.Popen
    url: str
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its children, as a crash would; a listening socket stays open.

        Returns once every process of the group is dead, not just the one we started: a gunicorn
        worker outlives its master by a few milliseconds, long enough to commit one more write.
        """
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_for(lambda: not _group_running(self.proc.pid), timeout=10, what="the process group to die")
        self._release()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process group to stop (SIGTERM), kill it if it does not, and free its port."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._release()
        sock = self.extra.get("socket")
        if sock is not None:
            sock.close()

    def _release(self) -> None:
        drain = self.extra.pop("drain", None)
        if drain is not None:
            drain.join(timeout=5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def log(self) -> str:
        """Return what the process wrote to its log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def _group_running(pgid: int) -> bool:
    """Tell whether any process of group `pgid` still runs (a zombie no longer does)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(group) == pgid and state not in ("Z", "X"):
            return True
    return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def start_local_rehive(args: tuple[str, ...] = (), port: int = 0, log_path: Path | None = None) -> Process:
    """Start `python -m local_rehive` and return once it prints the address it listens on."""
    command = [sys.executable, "-u", "-m", "local_rehive", "--port", str(port), *args]
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child; None: our stderr
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, start_new_session=True, text=True
    )
    if log:
        log.close()  # the child has its own copy
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = _LISTENING.search(line)
        if match:
            # Drain the rest of its stdout so that a chatty stand-in can never block on a full pipe.
            drain = threading.Thread(target=proc.stdout.read, daemon=True)
            drain.start()
            return Process(proc, match.group(1).rstrip("/"), log_path, {"drain": drain})
    _signal_group(proc, signal.SIGKILL)
    raise RuntimeError(f"local_rehive did not start (exit code {proc.poll()})")


def service_env(base: Mapping[str, str], **settings: str) -> dict[str, str]:
    """Return an environment for the service: `base` with our settings, ready for a subprocess."""
    env = {
        key: value for key, value in base.items() if not key.startswith(("REHIVE_", "WEBHOOK_", "DATABASE_"))
    }
    env.update(settings)
    # The store is named one way or the other; the other is set empty, so that a developer's .env
    # (read by the app, never overriding the environment) cannot add it and stop the start.
    if "DATABASE_URL" in settings or "DATABASE_PATH" in settings:
        env.setdefault("DATABASE_URL", "")
        env.setdefault("DATABASE_PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_service(
    env: Mapping[str, str],
    sock: socket.socket | None = None,
    *,
    workers: int = 2,
    threads: int = 8,
    app: str = "app:create_app()",
    log_path: Path | None = None,
    cwd: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> Process:
    """Start gunicorn serving the app on `sock` (kept open by us, so a restart keeps the port)."""
    sock = sock or listening_socket()
    port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(ROOT / "gunicorn.conf.py"),
        "--bind",
        f"fd://{sock.fileno()}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--pythonpath",
        str(ROOT),
        *extra_args,
        app,
    ]
    env = dict(env)
    if log_path and "PROMETHEUS_MULTIPROC_DIR" not in env:
        # Beside the log, so a server that is killed (and so never cleans up) leaves nothing in /tmp;
        # gunicorn.conf.py empties it at each start.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(log_path.parent / f"metrics-{port}")
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child; None: our stdout
    proc = subprocess.Popen(
        command,
        cwd=cwd or ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=(sock.fileno(),),
        start_new_session=True,
    )
    if log:
        log.close()  # the child has its own copy
    process = Process(proc, f"http://127.0.0.1:{port}", log_path, {"socket": sock})

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{process.log()[-3000:]}")
        return requests.get(process.url + "/healthz", timeout=1).status_code == 200

    try:
        wait_for(ready, timeout=30, what="the service to answer /healthz")
    except BaseException:  # a timeout or a Ctrl-C: nobody else holds the process to stop it
        process.kill()
        raise
    return process
