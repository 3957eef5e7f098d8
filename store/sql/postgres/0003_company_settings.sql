-- Per-company settings an admin edits on the manage page (today: savings_percent), as JSON values.
CREATE TABLE company_settings (
    company    text NOT NULL,
    name       text NOT NULL,
    value      text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (company, name)
);
-- The manage page lists one company's events, newest first, optionally of one status.
CREATE INDEX webhook_events_company ON webhook_events (company, status, seq);
