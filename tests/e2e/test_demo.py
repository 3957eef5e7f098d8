"""`make demo` keeps working: it runs the whole flow against its own stand-in and checks each step."""

import re
import subprocess
import sys

from devtools.processes import ROOT

SINGLE = ("A.", "B.", "C.", "D.", "E.", "F.", "G.", "H.", "I.", "J.")
MULTI = ("K.", "L.", "M.", "N.", "O.", "P.")


def test_the_demo_walks_the_whole_flow_and_succeeds():
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo"], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for label in SINGLE + MULTI:
        assert f"\n{label} " in result.stdout
    assert "The whole flow worked." in result.stdout
    assert "local-demo-admin-token" not in result.stdout
    # The stand-in's tokens are 64 hex digits: the demo shows them masked, never whole.
    assert not re.search(r"[0-9a-f]{64}", result.stdout + result.stderr)
