-- Campaign dispatch: the outbox of deliveries, the LINE requests carrying
-- them (retry key and recipients fixed before the first attempt), campaign
-- pause state, cron fires, tailing cursors and per-user rich-menu state.

-- One row per (campaign, trigger instance, recipient): the unique key is
-- what makes "never the same message twice" hold across instances.
CREATE TABLE deliveries (
    id             BIGSERIAL PRIMARY KEY,
    campaign_id    TEXT NOT NULL,
    trigger_key    TEXT NOT NULL,
    recipient_key  TEXT NOT NULL,
    line_user_id   TEXT,
    member_id      TEXT,
    due_at         TIMESTAMPTZ NOT NULL,
    messages       JSONB NOT NULL,
    context        JSONB NOT NULL DEFAULT '{}'::jsonb,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'requested', 'sent', 'skipped', 'failed')),
    skip_reason    TEXT,
    error          TEXT,
    request_id     BIGINT,
    lease_owner    TEXT,
    lease_until    TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL,
    requested_at   TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    UNIQUE (campaign_id, trigger_key, recipient_key)
);
CREATE INDEX deliveries_pending_due ON deliveries (due_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_user_requested ON deliveries (line_user_id, requested_at)
    WHERE requested_at IS NOT NULL;
CREATE INDEX deliveries_campaign ON deliveries (campaign_id, id);
CREATE INDEX deliveries_request ON deliveries (request_id) WHERE request_id IS NOT NULL;
-- Leases are cleared on every transition, so this stays as small as the work in flight.
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE lease_until IS NOT NULL;

CREATE TABLE send_requests (
    id                   BIGSERIAL PRIMARY KEY,
    kind                 TEXT NOT NULL CHECK (kind IN ('push', 'multicast')),
    retry_key            UUID NOT NULL UNIQUE,
    messages             JSONB NOT NULL,
    recipients           JSONB NOT NULL,
    status               TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts             INTEGER NOT NULL DEFAULT 0,
    next_attempt_at      TIMESTAMPTZ NOT NULL,
    lease_owner          TEXT,
    lease_until          TIMESTAMPTZ,
    last_error           TEXT,
    accepted_request_id  TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    sent_at              TIMESTAMPTZ,
    finished_at          TIMESTAMPTZ
);
CREATE INDEX send_requests_pending_due ON send_requests (next_attempt_at, id) WHERE status = 'pending';

CREATE TABLE campaign_state (
    campaign_id  TEXT PRIMARY KEY,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    enabled_at   TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE cron_fires (
    campaign_id  TEXT NOT NULL,
    fire_at      TIMESTAMPTZ NOT NULL,
    state        TEXT NOT NULL,
    PRIMARY KEY (campaign_id, fire_at)
);
CREATE INDEX cron_fires_started ON cron_fires (campaign_id, fire_at) WHERE state = 'started';

CREATE TABLE cursors (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);

-- desired: the menu renkei wants the user to have; linked: what LINE has, as
-- far as renkei knows (NULL = no per-user menu). A row needs work while they differ.
CREATE TABLE rich_menu_state (
    line_user_id  TEXT PRIMARY KEY,
    desired       TEXT,
    linked        TEXT,
    lease_owner   TEXT,
    lease_until   TIMESTAMPTZ,
    retry_at      TIMESTAMPTZ,
    last_error    TEXT,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX rich_menu_state_changed ON rich_menu_state (line_user_id) WHERE desired IS DISTINCT FROM linked;
