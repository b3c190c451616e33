-- The operator dashboard: operators (argon2id password hashes), their
-- sessions (only a SHA-256 of each cookie token is stored), failed sign-ins
-- (per name and per client address, for the sign-in limit), the audit log
-- of every change an operator makes, and the indexes the overview's counts
-- of deliveries in flight and failed and the member look-up read.
-- Backend differences: timestamps are timestamptz here and INTEGER
-- microseconds on SQLite; ids are BIGSERIAL here and INTEGER PRIMARY KEY
-- there; name columns are COLLATE "C" here.
CREATE TABLE operators (
    name           TEXT PRIMARY KEY COLLATE "C",
    role           TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    password_hash  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE operator_sessions (
    token_hash    TEXT PRIMARY KEY COLLATE "C",
    operator      TEXT NOT NULL COLLATE "C",
    csrf_token    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator);
CREATE INDEX operator_sessions_seen ON operator_sessions (last_seen_at);

-- `subject` is `name:<operator name>` or `addr:<client address>`.
CREATE TABLE sign_in_failures (
    id       BIGSERIAL PRIMARY KEY,
    subject  TEXT NOT NULL COLLATE "C",
    at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX sign_in_failures_subject ON sign_in_failures (subject, at);

CREATE TABLE operator_audit (
    id        BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    operator  TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT ''
);

-- The overview's deliveries in flight and failed: a request's deliveries,
-- and the failed requests.
CREATE INDEX delivery_sends_request ON delivery_sends (request_id);
CREATE INDEX send_requests_failed ON send_requests (id) WHERE status = 'failed';

-- The member look-up's messages of one LINE user, newest first.
CREATE INDEX deliveries_user ON deliveries (line_user_id, id);
