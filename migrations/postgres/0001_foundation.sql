-- Foundation tables: members, links (ID連携), friendships, events, webhook inbox.

CREATE TABLE members (
    member_id   TEXT PRIMARY KEY,
    attributes  JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE links (
    member_id     TEXT PRIMARY KEY REFERENCES members (member_id),
    line_user_id  TEXT NOT NULL UNIQUE,
    method        TEXT NOT NULL CHECK (method IN ('account_link', 'id_token', 'api', 'import')),
    linked_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE friendships (
    line_user_id  TEXT PRIMARY KEY,
    following     BOOLEAN NOT NULL,
    changed_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE events (
    id            BIGSERIAL PRIMARY KEY,
    event_id      TEXT UNIQUE,
    type          TEXT NOT NULL,
    member_id     TEXT,
    line_user_id  TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL,
    properties    JSONB NOT NULL DEFAULT '{}'::jsonb,
    received_at   TIMESTAMPTZ NOT NULL,
    CHECK (member_id IS NOT NULL OR line_user_id IS NOT NULL)
);
CREATE INDEX events_member ON events (member_id, occurred_at) WHERE member_id IS NOT NULL;
CREATE INDEX events_line_user ON events (line_user_id, occurred_at) WHERE line_user_id IS NOT NULL;

-- Raw LINE webhook events, deduplicated on webhookEventId, stored before the 200.
CREATE TABLE webhook_events (
    id                BIGSERIAL PRIMARY KEY,
    webhook_event_id  TEXT UNIQUE,
    type              TEXT NOT NULL,
    body              JSONB NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL,
    processed_at      TIMESTAMPTZ
);
