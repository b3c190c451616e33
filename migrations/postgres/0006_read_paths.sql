-- Segment evaluation reads every event of a user. Events arrive in time
-- order, so in the heap each of a user's events sits on its own page and a
-- full recompute costs one random page read per event. These covering indexes
-- hold what evaluation reads (type, time, properties), so a user's events are
-- adjacent index entries read by index-only scans.
--
-- An index entry must stay under ~2.7 kB: events with larger properties are
-- left to the small `*_large` indexes (read through the heap). The store's
-- queries repeat these predicates exactly so the planner can use the indexes.
CREATE INDEX events_member_facts ON events (member_id, occurred_at) INCLUDE (type, line_user_id, properties)
    WHERE member_id IS NOT NULL AND octet_length(properties::text) <= 2000;
CREATE INDEX events_member_large ON events (member_id, occurred_at)
    WHERE member_id IS NOT NULL AND octet_length(properties::text) > 2000;
CREATE INDEX events_line_user_facts ON events (line_user_id, occurred_at) INCLUDE (type, member_id, properties)
    WHERE line_user_id IS NOT NULL AND octet_length(properties::text) <= 2000;
CREATE INDEX events_line_user_large ON events (line_user_id, occurred_at)
    WHERE line_user_id IS NOT NULL AND octet_length(properties::text) > 2000;

-- Applying memberships diffs each user against the segments they are in:
-- with the segment in the index entry that read is index-only too.
DROP INDEX segment_memberships_user;
CREATE INDEX segment_memberships_user ON segment_memberships (line_user_id) INCLUDE (segment_id);
