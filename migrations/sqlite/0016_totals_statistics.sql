-- PostgreSQL's 0016 declares `event_totals.line_user_id` and
-- `event_tallies.line_user_id` mostly distinct for its planner. SQLite reads
-- the totals in a fixed loop order (`CROSS JOIN`) and needs nothing: this
-- migration only keeps the two backends' numbers aligned.
SELECT 1;
