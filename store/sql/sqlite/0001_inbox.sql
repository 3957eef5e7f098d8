-- The inbox as the first release created it (IF NOT EXISTS: a file made by that release upgrades in place).
CREATE TABLE IF NOT EXISTS webhook_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    company     TEXT NOT NULL,
    id          TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'received'
                CHECK (status IN ('received', 'processing', 'done', 'failed', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      REAL,
    lease_token TEXT,
    last_error  TEXT,
    traceback   TEXT,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    done_at     REAL,
    UNIQUE (company, id)
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_events_status ON webhook_events (status, seq);
