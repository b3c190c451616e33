-- A claim read each delivery's wide row (messages, context) by key: half the
-- cost of planning a multicast. The queue row now carries what the policies
-- need (LINE user, member) and points at one delivery with the same
-- messages and context (`payload_of`), so a claim of 2,000 deliveries of one
-- campaign reads one wide row. Deliveries' messages and context never change
-- once written, so the pointer stays right.
ALTER TABLE delivery_queue
    ADD COLUMN line_user_id TEXT,
    ADD COLUMN member_id TEXT,
    ADD COLUMN payload_of BIGINT;
UPDATE delivery_queue q SET line_user_id = d.line_user_id, member_id = d.member_id, payload_of = d.id
    FROM deliveries d WHERE d.id = q.delivery_id;
ALTER TABLE delivery_queue ALTER COLUMN payload_of SET NOT NULL;
