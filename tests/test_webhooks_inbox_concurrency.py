"""Group commit under contention: every delivery is stored once and told so exactly once."""

from __future__ import annotations

import subprocess
import sys

from devtools.processes import ROOT
from webhooks import Inbox

IDS = 1_000
# Each process inserts every id twice, from 16 threads, so duplicates meet inside one group commit
# as well as across processes.
INSERTER = f"""
import sys, threading
from webhooks.inbox import Inbox

inbox = Inbox(sys.argv[1])
stored = []

def insert(thread):
    mine = 0
    for n in range(thread, 2 * {IDS}, 16):
        mine += inbox.insert("acme", str(n % {IDS}), "test.event", "{{}}")
    stored.append(mine)

threads = [threading.Thread(target=insert, args=(t,)) for t in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(stored))
"""


def test_two_processes_of_sixteen_threads_store_each_id_once_and_say_so_once(tmp_path):
    path = str(tmp_path / "inbox.sqlite3")
    inbox = Inbox(path)
    inbox.create_schema()
    processes = [
        subprocess.Popen([sys.executable, "-c", INSERTER, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    told_stored = [int(process.communicate(timeout=120)[0]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sum(told_stored) == IDS  # True exactly once per id, False for every other insert
    assert inbox.counts() == {"received": IDS}
    inbox.close()


def test_the_same_id_twice_in_one_process_is_stored_then_refused(tmp_path):
    inbox = Inbox(str(tmp_path / "inbox.sqlite3"))
    inbox.create_schema()
    assert inbox.insert("acme", "1", "test.event", "{}") is True
    assert inbox.insert("acme", "1", "test.event", "{}") is False
    assert inbox.insert("other", "1", "test.event", "{}") is True
    inbox.close()
