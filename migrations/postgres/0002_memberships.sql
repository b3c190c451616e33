-- Segment memberships (current state), their transitions (the history that
-- campaigns react to) and the per-user time at which an answer may next
-- change with no new data (time-driven evaluation).

CREATE TABLE segment_memberships (
    segment_id    TEXT NOT NULL,
    line_user_id  TEXT NOT NULL,
    entered_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (segment_id, line_user_id)
);
CREATE INDEX segment_memberships_user ON segment_memberships (line_user_id);

CREATE TABLE segment_transitions (
    id            BIGSERIAL PRIMARY KEY,
    segment_id    TEXT NOT NULL,
    line_user_id  TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('entered', 'exited')),
    at            TIMESTAMPTZ NOT NULL,
    cause         TEXT NOT NULL
);
CREATE INDEX segment_transitions_segment ON segment_transitions (segment_id, at);

CREATE TABLE evaluation_schedule (
    line_user_id  TEXT PRIMARY KEY,
    due_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX evaluation_schedule_due ON evaluation_schedule (due_at);
