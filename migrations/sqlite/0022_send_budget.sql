-- The channel's send budget: one row per LINE endpoint (`bucket`: push,
-- multicast, rich_menu_link, rich_menu_bulk) that every instance sending on
-- the channel takes its slots from. `tat_us` is the end of the last slot
-- granted (the bucket's "theoretical arrival time", GCRA), `taken_at_us` the
-- clock's time of the last take, both microseconds since the Unix epoch so
-- that one statement serves both backends; `rate` is the requests per second
-- of the last take (the `[dispatch]` rate).
-- Backend differences: INTEGER here, BIGINT on PostgreSQL; SQLite's takes
-- bind renkei's clock, PostgreSQL's use the database's. A single SQLite
-- instance keeps its budget in memory and does not use this table today.
CREATE TABLE send_budget (
    bucket       TEXT PRIMARY KEY,
    rate         INTEGER NOT NULL,
    tat_us       INTEGER NOT NULL,
    taken_at_us  INTEGER NOT NULL
);
