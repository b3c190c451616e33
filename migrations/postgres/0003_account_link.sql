-- Webhook processing leases and account-link nonces.

-- A worker claims unprocessed webhook rows for a lease; a crash leaves the
-- rows unprocessed, and they are claimed again once the lease runs out.
ALTER TABLE webhook_events ADD COLUMN claimed_until TIMESTAMPTZ;
ALTER TABLE webhook_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhook_events ADD COLUMN last_error TEXT;
CREATE INDEX webhook_events_pending ON webhook_events (id) WHERE processed_at IS NULL;

-- One nonce per account-link attempt: single use, expires after 10 minutes.
-- consumed_by is the webhook_events row that used it, so re-processing that
-- same row after a crash is recognised and not mistaken for a reuse.
CREATE TABLE link_nonces (
    nonce         TEXT PRIMARY KEY,
    member_id     TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    used_at       TIMESTAMPTZ,
    result        TEXT,
    line_user_id  TEXT,
    consumed_by   BIGINT
);
CREATE INDEX link_nonces_expires ON link_nonces (expires_at);
