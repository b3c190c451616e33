-- A recompute compares each page's stored memberships with the new ones as
-- one string per user, segments in byte order. With the segment in the key,
-- in that order, the page's memberships come out of the index already sorted
-- and the strings are built without a sort per user.
DROP INDEX segment_memberships_user;
CREATE INDEX segment_memberships_user ON segment_memberships (line_user_id, segment_id COLLATE "C");
