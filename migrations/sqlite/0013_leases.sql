-- Leases: named singleton work (one holder at a time, taken over when the
-- holder's lease expires). Same table on both backends; timestamps are
-- INTEGER microseconds here, timestamptz on PostgreSQL.
CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
