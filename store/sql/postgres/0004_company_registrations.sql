-- Multi-company mode: one row per company that activated the extension. Tokens and webhook secrets are
-- Fernet ciphertexts (never plaintext); the key stays in the environment (TOKEN_ENCRYPTION_KEYS).
CREATE TABLE company_registrations (
    company                text PRIMARY KEY,
    active                 boolean NOT NULL,
    token                  text,
    token_user             text,
    secret                 text NOT NULL,
    previous_secret        text,
    previous_secret_until  double precision,
    token_status           text NOT NULL DEFAULT 'ok',
    activated_at           double precision,
    deactivated_at         double precision,
    webhook_events         text NOT NULL DEFAULT '[]',
    updated_at             double precision NOT NULL
);
