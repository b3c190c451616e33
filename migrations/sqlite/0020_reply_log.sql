-- Replies renkei made (or decided not to make) to users' messages and
-- postbacks, one row per webhook event: `event_key` is the event's renkei
-- event id (`line:<webhookEventId>`), so a webhook event handled again after
-- a crash finds its row and never replies twice (LINE's reply token is single
-- use anyway). `outcome` is sent, failed (`detail` keeps LINE's message),
-- expired (the reply token's life had passed) or not_owner (another system
-- owns reply tokens: `webhook.reply_owner`); `answer` is reply,
-- unlinked_reply or link_prompt. Counted per rule and day for /metrics and
-- the dashboard by (rule_id, replied_at).
-- Backend differences: `replied_at` is INTEGER microseconds here and
-- timestamptz on PostgreSQL.
CREATE TABLE reply_log (
    event_key     TEXT PRIMARY KEY,
    line_user_id  TEXT NOT NULL,
    rule_id       TEXT NOT NULL,
    answer        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    detail        TEXT,
    replied_at    INTEGER NOT NULL
);
CREATE INDEX reply_log_rule_time ON reply_log (rule_id, replied_at);
