-- The channel's send budget: one row per LINE endpoint (`bucket`: push,
-- multicast, rich_menu_link, rich_menu_bulk) that every instance sending on
-- the channel takes its slots from. `tat_us` is the end of the last slot
-- granted (the bucket's "theoretical arrival time", GCRA), `taken_at_us` the
-- database's time of the last take, both microseconds since the Unix epoch
-- as BIGINT so that one statement serves both backends; `rate` is the
-- requests per second of the last take (the instances' `[dispatch]` rate).
-- Backend differences: none in the table (INTEGER on SQLite); PostgreSQL's
-- takes use the database's clock, SQLite's (one instance) bind renkei's.
CREATE TABLE send_budget (
    bucket       TEXT PRIMARY KEY,
    rate         BIGINT NOT NULL,
    tat_us       BIGINT NOT NULL,
    taken_at_us  BIGINT NOT NULL
);
