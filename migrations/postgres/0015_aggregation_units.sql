-- LINE's own numbers per campaign: every send request carries the
-- `customAggregationUnits` name of its campaign (NULL for requests made
-- before this migration), and `line_unit_stats` keeps what LINE's
-- "statistics per unit" said of each unit, when it was last asked. LINE
-- answers null for fewer than 20 users: kept as NULL, never 0.
--
-- Backend differences: timestamps are timestamptz here and INTEGER µs on
-- SQLite; `unit` is COLLATE "C".
ALTER TABLE send_requests ADD COLUMN aggregation_unit TEXT COLLATE "C";
CREATE INDEX send_requests_unit_sent ON send_requests (aggregation_unit, sent_at)
    WHERE aggregation_unit IS NOT NULL AND status = 'sent';

CREATE TABLE line_unit_stats (
    unit               TEXT COLLATE "C" PRIMARY KEY,
    unique_impression  BIGINT,
    unique_click       BIGINT,
    fetched_at         TIMESTAMPTZ NOT NULL
);
