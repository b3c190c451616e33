-- Leases: named singleton work (one holder at a time, taken over when the
-- holder's lease expires). Same table on both backends; timestamps are
-- timestamptz here, INTEGER microseconds on SQLite.
CREATE TABLE leases (
    name         TEXT PRIMARY KEY COLLATE "C",
    holder       TEXT NOT NULL,
    acquired_at  TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
