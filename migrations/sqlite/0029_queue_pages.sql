-- PostgreSQL's 0029 makes `delivery_queue` rows pages of deliveries with a
-- `size`. SQLite keeps a row per delivery; `size` (always 1) lets the
-- overview count the queue with one statement on both backends.
ALTER TABLE delivery_queue ADD COLUMN size INTEGER NOT NULL DEFAULT 1;
