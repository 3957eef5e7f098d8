-- What operating the inbox needs: a cheap "oldest unfinished" for metrics, retention by age, a row
-- /readyz can write, and periodic jobs that one process at a time runs.
CREATE INDEX IF NOT EXISTS webhook_events_unfinished ON webhook_events (received_at)
    WHERE status IN ('received', 'processing', 'failed');
CREATE INDEX IF NOT EXISTS webhook_events_done_at ON webhook_events (done_at) WHERE status = 'done';
CREATE TABLE IF NOT EXISTS store_health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS periodic_runs (
    name        TEXT PRIMARY KEY,
    last_run_at REAL NOT NULL
);
