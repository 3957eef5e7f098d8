"""Schemathesis hooks for check 4 (loaded through SCHEMATHESIS_HOOKS, never imported by the suite).

The document cannot say that `company` must be ours, so nearly every generated delivery would stop
at the 403; giving three in four of them our company lets the fuzzer reach the inbox (202 and 200).
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import schemathesis

COMPANY = os.environ.get("RELIABILITY_COMPANY", "demo")


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Give most generated webhook envelopes our company (chosen from the body, so runs repeat)."""
    if isinstance(body, dict) and "company" in body and zlib.crc32(repr(body).encode()) % 4:
        body["company"] = COMPANY
    return body
