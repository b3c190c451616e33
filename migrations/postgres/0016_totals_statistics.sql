-- The running totals are read per LINE user: a page of users joined to
-- `event_totals` / `event_tallies` by `line_user_id`. Where most events name
-- only a member, almost every row has line_user_id '' and ANALYZE finds one
-- distinct value, so the planner expects each user to match every row and
-- scans the whole table (0.4 s a user at 1M members, found by the recompute
-- benchmark's one-user evaluation). Declaring the column mostly distinct
-- keeps the per-user primary-key lookup (0.1 ms).
--
-- Backend differences: SQLite reads the totals in a fixed loop order
-- (`CROSS JOIN`) and needs nothing; its 0016 is empty.
ALTER TABLE event_totals ALTER COLUMN line_user_id SET (n_distinct = -0.5);
ALTER TABLE event_tallies ALTER COLUMN line_user_id SET (n_distinct = -0.5);
ANALYZE event_totals;
ANALYZE event_tallies;
