"""A throwaway PostgreSQL cluster on a free loopback port, for the tests, `make reliability` and `make bench`.

`python -m devtools.postgres --install` installs Debian's `postgresql` package when no initdb is
found (`make test` runs it first, as `make bench` installs wrk). initdb and pg_ctl refuse to run as
root, which CI is: then the cluster belongs to the `postgres` user, in a temp folder it owns.
The cluster trades durability for speed (fsync off): it lives for one run.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import listening_socket

PACKAGE = "postgresql"


def find_bindir() -> Path | None:
    """Return the newest /usr/lib/postgresql/<version>/bin that has initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def ensure_postgres() -> Path:
    """Return PostgreSQL's bin folder, installing Debian's package first if it is missing."""
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if not shutil.which("apt-get") or os.geteuid() != 0:
        sys.exit("PostgreSQL is missing; install it (Debian/Ubuntu: sudo apt-get install -y postgresql).")
    print("PostgreSQL is missing; installing it with apt-get install -y postgresql ...", flush=True)
    quiet = {
        "stdout": subprocess.DEVNULL,
        "check": False,
        "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    }
    if subprocess.run(["apt-get", "install", "-y", "-qq", PACKAGE], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", PACKAGE], **quiet)
    bindir = find_bindir()
    if bindir is None:
        sys.exit("apt-get could not install PostgreSQL.")
    return bindir


@dataclass
class Cluster:
    """A running throwaway cluster: its URL (superuser `postgres`, no password) and how to stop it."""

    url: str
    port: int
    folder: Path
    bindir: Path
    as_user: list[str]

    def url_for(self, database: str) -> str:
        """Return the URL of another database of this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server at once and delete its files."""
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            cwd=self.folder,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(max_connections: int = 300) -> Cluster:
    """initdb and start a cluster on a free loopback port; its socket lives in its own temp folder."""
    bindir = ensure_postgres()
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb and pg_ctl refuse root: run them as the postgres user the Debian package created.
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    created = subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        capture_output=True,
        cwd=folder,  # the postgres user may not enter the caller's folder (a clone under /root)
        text=True,
        check=False,
    )
    if created.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {created.stderr.strip()}")
    with contextlib.closing(listening_socket()) as sock:  # a free port, released just before the start
        port = sock.getsockname()[1]
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        f" -c max_connections={max_connections}"
    )
    started = subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        capture_output=True,
        cwd=folder,  # the postgres user may not enter the caller's folder (a clone under /root)
        text=True,
        check=False,
    )
    cluster = Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", port, folder, bindir, as_user)
    if started.returncode != 0:
        log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
        cluster.stop()
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n{log[-2000:]}")
    return cluster


def create_database(cluster: Cluster, name: str) -> str:
    """Create an empty database in `cluster` and return its URL."""
    import psycopg

    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url_for(name)


def drop_database(cluster: Cluster, name: str) -> None:
    """Drop a database of `cluster`, closing whatever is still connected to it."""
    import psycopg

    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    """`--install`: make sure PostgreSQL is installed; `--try`: also start and stop a cluster."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--install", action="store_true", help="install Debian's postgresql if missing")
    parser.add_argument("--try", dest="try_it", action="store_true", help="start and stop a cluster")
    args = parser.parse_args()
    bindir = ensure_postgres()
    if args.try_it:
        started = time.monotonic()
        cluster = start_cluster()
        cluster.stop()
        print(f"PostgreSQL in {bindir}: a cluster started and stopped in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
