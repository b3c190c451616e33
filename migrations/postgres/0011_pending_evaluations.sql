-- Users still waiting for re-evaluation when `renkei serve` stopped
-- (SIGTERM), saved so that the next start queues them again. One row per
-- stop: `users` is a JSON document {"everyone": bool, "users": [[kind, id,
-- cause], ...]}; a starting evaluator reads every row, queues its users, and
-- deletes the row once they are evaluated.
-- Backend differences: `users` is jsonb here and TEXT on SQLite; `saved_at`
-- is timestamptz here and INTEGER microseconds there.
CREATE TABLE pending_evaluations (
    id        BIGSERIAL PRIMARY KEY,
    users     jsonb NOT NULL,
    saved_at  timestamptz NOT NULL
);
