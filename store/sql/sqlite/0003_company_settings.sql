-- Per-company settings an admin edits on the manage page (today: savings_percent), as JSON values.
CREATE TABLE IF NOT EXISTS company_settings (
    company    TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (company, name)
);
-- The manage page lists one company's events, newest first, optionally of one status.
CREATE INDEX IF NOT EXISTS webhook_events_company ON webhook_events (company, status, seq);
