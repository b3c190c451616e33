-- Users still waiting for re-evaluation when `renkei serve` stopped
-- (SIGTERM), saved so that the next start queues them again. One row per
-- stop: `users` is a JSON document {"everyone": bool, "users": [[kind, id,
-- cause], ...]}; a starting evaluator reads every row, queues its users, and
-- deletes the row once they are evaluated.
-- Backend differences: `users` is TEXT here and jsonb on PostgreSQL;
-- `saved_at` is INTEGER microseconds here and timestamptz there.
CREATE TABLE pending_evaluations (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    users     TEXT NOT NULL,
    saved_at  INTEGER NOT NULL
);
