-- Multi-company mode: one row per company that activated the extension. Tokens and webhook secrets are
-- Fernet ciphertexts (never plaintext); the key stays in the environment (TOKEN_ENCRYPTION_KEYS).
CREATE TABLE IF NOT EXISTS company_registrations (
    company                TEXT PRIMARY KEY,
    active                 INTEGER NOT NULL,
    token                  TEXT,
    token_user             TEXT,
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  REAL,
    token_status           TEXT NOT NULL DEFAULT 'ok',
    activated_at           REAL,
    deactivated_at         REAL,
    webhook_events         TEXT NOT NULL DEFAULT '[]',
    updated_at             REAL NOT NULL
);
