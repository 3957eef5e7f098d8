"""The inbox's names as earlier releases exported them; the inbox itself lives in the store package.

`Inbox(path)` is the SQLite backend; the app opens whichever backend DATABASE_URL names (store.open_store).
"""

from __future__ import annotations

from store import REPLAYABLE, STATUSES, Claim, Store, StoreUnavailable
from store.sqlite import SqliteStore as Inbox

__all__ = ["REPLAYABLE", "STATUSES", "Claim", "Inbox", "Store", "StoreUnavailable"]
