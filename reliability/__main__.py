"""`python -m reliability [--seed N] [--keep DIR] [CHECK ...]`: run the checks and print one table.

The seed (default 20260601, or RELIABILITY_SEED) drives every random choice; --keep DIR keeps the
servers' logs, inboxes, schemathesis reports and hostile.tsv (one line per crafted request).
Exits 1 when any row is not clean (or a check could not run), 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from reliability import access, crash, fuzz, hostile, hosts, leaks, proxy, upstream
from reliability.stack import Result, Run, progress

# The table lists the checks in this order. They run in it too, except that the two-host crash check
# (7) runs right after the crash check (1), and the leak scan (5) runs last, so that it covers every
# answer, log line and row the others produced.
CHECKS: dict[str, Callable[[Run], Result]] = {
    "crash": crash.run,
    "upstream": upstream.run,
    "hostile": hostile.run,
    "fuzz": fuzz.run,
    "leaks": leaks.run,
    "access": access.run,
    "hosts": hosts.run,
    "proxy": proxy.run,
}
RUN_ORDER = ("crash", "hosts", "upstream", "hostile", "fuzz", "access", "proxy", "leaks")
DEFAULT_SEED = 20_260_601


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def print_table(results: list[Result], seconds: float) -> None:
    """Print check, figures and clean? as one table, notes under their row."""
    width = 96
    line = "+" + "-" * 14 + "+" + "-" * (width + 2) + "+" + "-" * 8 + "+"
    print("\n" + line)
    print(f"| {'check':<12} | {'figures':<{width}} | {'clean?':<6} |")
    print(line.replace("-", "="))
    for result in results:
        lines = textwrap.wrap(result.figures, width) or [""]
        for note in result.notes:
            lines += textwrap.wrap("! " + note, width, subsequent_indent="  ")
        for n, text in enumerate(lines):
            check = f"{list(CHECKS).index(result.check) + 1} {result.check}" if n == 0 else ""
            clean = ("yes" if result.clean else "NO") if n == 0 else ""
            print(f"| {check:<12} | {text:<{width}} | {clean:<6} |")
        print(line)
    verdict = "clean" if all(r.clean for r in results) else "NOT clean"
    print(f"{len(results)} checks in {seconds:.0f} s: {verdict}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen checks (all by default) and return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("RELIABILITY_SEED", DEFAULT_SEED)))
    parser.add_argument("--keep", metavar="DIR", help="keep the servers' logs and inboxes in DIR")
    parser.add_argument("checks", nargs="*", metavar="CHECK", help="any of: " + ", ".join(CHECKS))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error("unknown check(s): " + ", ".join(unknown))
    chosen = [name for name in RUN_ORDER if not args.checks or name in args.checks]
    signal.signal(signal.SIGTERM, _interrupted)

    started = time.monotonic()
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = str(Path(args.keep).resolve())
            Path(workdir).mkdir(parents=True, exist_ok=True)
        else:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="reliability-"))
        run = Run(args.seed, Path(workdir))
        progress("run", f"seed {args.seed}; servers' logs and inboxes in {workdir}")
        try:
            run.start_rehive()
            for name in chosen:
                progress(name, "starting")
                try:
                    result = CHECKS[name](run)
                except Exception as exc:
                    traceback.print_exc()
                    result = Result(name, f"could not run: {type(exc).__name__}: {exc}", False)
                progress(name, f"{'clean' if result.clean else 'NOT clean'}: {result.figures}")
                results.append(result)
            results.sort(key=lambda result: list(CHECKS).index(result.check))
        except KeyboardInterrupt:
            progress("run", "interrupted; stopping every server")
            run.kill_all()
            raise
        finally:
            run.close()
    print_table(results, time.monotonic() - started)
    return 0 if results and all(result.clean for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
