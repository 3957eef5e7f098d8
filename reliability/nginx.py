"""Real nginx in front of the service, configured by deploy/nginx.conf: installed, started, asked, stopped.

`python -m reliability.nginx` (run by `make test` and `make reliability`) installs nginx and openssl
with Debian's apt-get when either is missing, as `make bench` installs wrk. `start_proxy` serves the
shipped deploy/nginx.conf, with only its marked values swapped for test ones (free loopback ports, the
upstream gunicorn, a certificate made at run time for PUBLIC_NAME), from a private folder of its own.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import ROOT, Process, wait_for
from reliability.hostile import build
from reliability.stack import RawAnswer, Seen

SITE = ROOT / "deploy" / "nginx.conf"
PUBLIC_NAME = "public.example.test"  # the service's public name in tests; never resolved, only sent
PACKAGES = {"nginx": "nginx", "openssl": "openssl"}  # tool: Debian package


class ProxyUnavailable(RuntimeError):
    """nginx or openssl is missing, or nginx would not start."""


def find(tool: str) -> str | None:
    """Return the path of `tool`, looking in /usr/sbin too (not on a normal user's PATH)."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def ensure_installed() -> None:
    """Install nginx and openssl with apt-get when missing (as root); exit with a message if impossible."""
    missing = [package for tool, package in PACKAGES.items() if not find(tool)]
    if not missing:
        return
    names = " ".join(missing)
    if not shutil.which("apt-get") or os.geteuid() != 0:
        sys.exit(f"{names}: missing; install (Debian/Ubuntu: sudo apt-get install -y {names}).")
    print(f"{names}: missing; installing with apt-get install -y {names} ...", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "check": False}
    command = ["apt-get", "install", "-y", "-qq", *missing]
    if subprocess.run(command, **quiet).returncode != 0:  # noqa: S603 - fixed arguments
        subprocess.run(["apt-get", "update", "-qq"], **quiet)  # noqa: S607
        subprocess.run(command, **quiet)  # noqa: S603
    still = [package for tool, package in PACKAGES.items() if not find(tool)]
    if still:
        sys.exit(f"apt-get could not install {' '.join(still)}.")


def free_port() -> int:
    """Return a loopback port free right now (nginx binds its own sockets, so it cannot take ours)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certificate(folder: Path, name: str = PUBLIC_NAME) -> tuple[Path, Path]:
    """Make a self-signed certificate for `name` with openssl; return (certificate, key)."""
    openssl = find("openssl")
    if openssl is None:
        raise ProxyUnavailable("openssl is missing: `make test` installs it (apt-get install -y openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
    command += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True, timeout=30)  # noqa: S603 - fixed arguments
    return cert, key


# Each marked value of deploy/nginx.conf and what a test serves instead. Every pattern must match
# exactly as often as said: if the file changes shape, the tests fail rather than test something else.
def _swaps(upstream: str, http_port: int, https_port: int, cert: Path, key: Path, name: str) -> list:
    return [
        (r"server 127\.0\.0\.1:8000;", f"server {upstream};", 1),
        (r"listen 80\b", f"listen 127.0.0.1:{http_port}", 2),
        (r"listen 443 ssl\b", f"listen 127.0.0.1:{https_port} ssl", 2),
        (r"ssl_certificate /\S+;", f"ssl_certificate {cert};", 1),
        (r"ssl_certificate_key /\S+;", f"ssl_certificate_key {key};", 1),
        (r"server_name api\.example\.com;", f"server_name {name};", 2),
    ]


def render_site(
    text: str, *, upstream: str, http_port: int, https_port: int, cert: Path, key: Path, name: str
) -> str:
    """Return deploy/nginx.conf's `text` with its marked values swapped for a test's."""
    for pattern, replacement, count in _swaps(upstream, http_port, https_port, cert, key, name):
        text, found = re.subn(pattern, replacement, text)
        if found != count:
            raise ValueError(f"deploy/nginx.conf: expected {count} of {pattern!r}, found {found}")
    return text


def _main_config(folder: Path) -> str:
    """Return nginx's own configuration for a test: everything in `folder`, in the foreground."""
    # As root, nginx's workers would run as `nobody`, who cannot enter the test's private folder
    # (request bodies and large answers are buffered there): run them as whoever runs the test.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    return f"""
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/site.conf;
}}
"""


@dataclass
class Proxy:
    """A running nginx serving deploy/nginx.conf on `port` (TLS) for `name`, in front of `upstream`."""

    process: Process
    port: int
    http_port: int
    name: str
    cert: Path
    folder: Path

    @property
    def logs(self) -> list[Path]:
        """Return nginx's log files."""
        return [self.folder / "error.log", self.folder / "access.log"]

    @property
    def url(self) -> str:
        """Return the public URL of the service behind it (the port included, as a client sees it)."""
        return f"https://{self.name}:{self.port}"

    def tls(self) -> ssl.SSLContext:
        """Return a client context that trusts only this proxy's certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def connect(
        self, source: str = "127.0.0.1", timeout: float = 10.0, sni: str | None = None
    ) -> ssl.SSLSocket:
        """Open a TLS connection to the proxy from loopback address `source`, naming `sni` (its name)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout, source_address=(source, 0))
        try:
            return self.tls().wrap_socket(sock, server_hostname=sni or self.name)
        except BaseException:
            sock.close()
            raise

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        source: str = "127.0.0.1",
        host: str | None = None,
        timeout: float = 10.0,
        seen: Seen | None = None,
        length: bool = True,
    ) -> RawAnswer:
        """Send one request through the proxy from `source`, as written, and read the answer.

        Raises http.client.RemoteDisconnected when nginx closes the connection without answering.
        """
        request = build(method, target, headers, body, host=host or f"{self.name}:{self.port}", length=length)
        with self.connect(source, timeout) as sock:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            answer = RawAnswer(response.status, list(response.getheaders()), response.read())
        if seen is not None:
            seen.add(f"{method} {target[:100]} through nginx", answer.status, answer.headers, answer.body)
        return answer

    def stop(self) -> None:
        """Stop nginx (SIGTERM: its fast shutdown)."""
        self.process.stop(timeout=10)


def start_proxy(upstream_port: int, folder: Path, name: str = PUBLIC_NAME) -> Proxy:
    """Start nginx with deploy/nginx.conf in front of gunicorn on 127.0.0.1:`upstream_port`."""
    nginx = find("nginx")
    if nginx is None:
        raise ProxyUnavailable("nginx is missing: `make test` installs it (apt-get install -y nginx)")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(folder, name)
    (folder / "nginx.conf").write_text(_main_config(folder))
    problem = ""
    for _attempt in range(3):  # a port found free may be taken before nginx binds it: try others
        http_port, https_port = free_port(), free_port()
        site = render_site(
            SITE.read_text(),
            upstream=f"127.0.0.1:{upstream_port}",
            http_port=http_port,
            https_port=https_port,
            cert=cert,
            key=key,
            name=name,
        )
        (folder / "site.conf").write_text(site)
        command = [
            nginx,
            "-p",
            str(folder),
            "-c",
            str(folder / "nginx.conf"),
            "-e",
            str(folder / "error.log"),
        ]
        with open(folder / "stderr.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own arguments
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = Process(proc, f"https://{name}:{https_port}", folder / "error.log")
        proxy = Proxy(process, https_port, http_port, name, cert, folder)
        try:
            wait_for(functools.partial(_ready, proxy), timeout=15, what="nginx to answer /healthz")
            return proxy
        except (TimeoutError, ProxyUnavailable) as exc:
            problem = str(exc)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except BaseException:
            process.kill()
            raise
    raise ProxyUnavailable(f"nginx did not start: {problem}")


def _ready(proxy: Proxy) -> bool:
    if not proxy.process.alive():
        raise ProxyUnavailable(proxy.process.log()[-1500:].strip() or "nginx exited")
    return proxy.request("GET", "/healthz", timeout=2).status == 200


if __name__ == "__main__":
    ensure_installed()
