-- Foundation tables: members, links (ID連携), friendships, events, webhook inbox.
-- Times are INTEGER microseconds since the Unix epoch (UTC), always bound from
-- Rust: they compare and sort exactly, unlike text with varying precision.

CREATE TABLE members (
    member_id   TEXT PRIMARY KEY NOT NULL,
    attributes  TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE links (
    member_id     TEXT PRIMARY KEY NOT NULL REFERENCES members (member_id),
    line_user_id  TEXT NOT NULL UNIQUE,
    method        TEXT NOT NULL CHECK (method IN ('account_link', 'id_token', 'api', 'import')),
    linked_at     INTEGER NOT NULL
);

CREATE TABLE friendships (
    line_user_id  TEXT PRIMARY KEY NOT NULL,
    following     INTEGER NOT NULL,
    changed_at    INTEGER NOT NULL
);

CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    event_id      TEXT UNIQUE,
    type          TEXT NOT NULL,
    member_id     TEXT,
    line_user_id  TEXT,
    occurred_at   INTEGER NOT NULL,
    properties    TEXT NOT NULL DEFAULT '{}',
    received_at   INTEGER NOT NULL,
    CHECK (member_id IS NOT NULL OR line_user_id IS NOT NULL)
);
CREATE INDEX events_member ON events (member_id, occurred_at) WHERE member_id IS NOT NULL;
CREATE INDEX events_line_user ON events (line_user_id, occurred_at) WHERE line_user_id IS NOT NULL;

-- Raw LINE webhook events, deduplicated on webhookEventId, stored before the 200.
CREATE TABLE webhook_events (
    id                INTEGER PRIMARY KEY,
    webhook_event_id  TEXT UNIQUE,
    type              TEXT NOT NULL,
    body              TEXT NOT NULL,
    received_at       INTEGER NOT NULL,
    processed_at      INTEGER
);
