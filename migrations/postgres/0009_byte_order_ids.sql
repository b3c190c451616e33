-- Identifiers compare byte by byte. Under the database's default collation
-- (often en_US.UTF-8, or C.UTF-8) every comparison of two ids in an index
-- goes through the C library's locale-aware strcoll: a full recompute makes
-- millions of index descents on these columns, and collation was ~10 % of
-- the database's work. `COLLATE "C"` orders ids as SQLite and Rust do, and
-- equality is unchanged (every collation involved is deterministic).
--
-- Only the indexes on these columns are rebuilt; the tables are not
-- rewritten. Every column holding one of these ids is changed together, so
-- that joins between tables compare under one collation and keep their
-- indexes.
ALTER TABLE members ALTER COLUMN member_id TYPE TEXT COLLATE "C";
ALTER TABLE links
    ALTER COLUMN member_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE friendships ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE events
    ALTER COLUMN member_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE segment_memberships
    ALTER COLUMN segment_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE segment_transitions
    ALTER COLUMN segment_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE evaluation_schedule ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE link_nonces
    ALTER COLUMN member_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN member_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE delivery_queue
    ALTER COLUMN member_id TYPE TEXT COLLATE "C",
    ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE delivery_sends ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";
ALTER TABLE rich_menu_state ALTER COLUMN line_user_id TYPE TEXT COLLATE "C";

-- Changing a column's type drops its statistics; without them the planner
-- guesses, and per-user reads went from ~1 ms to ~25 ms until the next
-- autovacuum analyzed the tables.
ANALYZE members, links, friendships, events, segment_memberships, segment_transitions, evaluation_schedule,
    link_nonces, deliveries, delivery_queue, delivery_sends, rich_menu_state;
