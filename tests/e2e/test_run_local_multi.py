"""`EXTENSION_MODE=multi make run`: installed for `demo`; the banner's calls install it for `other` too."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys

import pytest
import requests

from devtools.processes import ROOT
from devtools.stand_in import StandIn

NOT_ACTIVATED = "This company has not activated the extension."


@pytest.fixture
def local_multi(tmp_path):
    """Run `python -m devtools.run_local` in multi mode on free ports; yield (banner, process)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REHIVE_", "DATABASE_"))}
    env.update(EXTENSION_MODE="multi", PORT="0", LOCAL_REHIVE_PORT="0", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "devtools.run_local"],
        cwd=tmp_path,  # its instance/ folder, away from the checkout's
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("====") and len([x for x in lines if x.startswith("====")]) == 2:
                break
        banner = "".join(lines)
        assert proc.poll() is None, banner
        yield banner, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_multi_mode_is_active_for_demo_and_the_banner_activates_it_for_other(local_multi):
    banner, cwd = local_multi
    assert "MULTI-COMPANY" in banner
    rehive = re.search(r"Rehive stand-in\s+(http://\S+)/3/", banner).group(1)
    service = re.search(r"Service\s+(http://\S+?)/\s", banner).group(1)
    stand_in = StandIn(rehive)

    def custom(email: str, password: str, company: str) -> requests.Response:
        token = stand_in.login(email, password, company)
        return requests.get(
            f"{service}/custom/transactions/", headers={"Authorization": f"Token {token}"}, timeout=15
        )

    assert custom("alice@demo.test", "alice-pass-123", "demo").status_code == 200
    refused = custom("mallory@other.test", "mallory-pass-123", "other")
    assert (refused.status_code, refused.json()["message"]) == (403, NOT_ACTIVATED)

    # The banner's own lines, run as a developer would paste them.
    activation = "\n".join(
        line for line in banner.splitlines() if line.strip().startswith(("ADMIN=", "ID=", "curl -s -X PATCH"))
    )
    assert activation.count("\n") == 2
    pasted = subprocess.run(
        ["bash", "-c", "set -e\n" + activation], capture_output=True, text=True, timeout=60
    )
    assert pasted.returncode == 0, pasted.stderr
    assert '"active":true' in pasted.stdout.replace(" ", "")
    assert custom("mallory@other.test", "mallory-pass-123", "other").status_code == 200

    # The CLI line of the banner works, and its env file (it holds the Fernet key) is the user's only.
    env_file = cwd / "instance" / "local-multi.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    key = next(
        line.split("=", 1)[1] for line in env_file.read_text().splitlines() if line.startswith("TOKEN_")
    )
    assert key not in banner
    listing = subprocess.run(
        ["bash", "-c", f"set -a; . {env_file}; {sys.executable} -m flask --app app companies list --json"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert '"demo"' in listing.stdout and '"other"' in listing.stdout
