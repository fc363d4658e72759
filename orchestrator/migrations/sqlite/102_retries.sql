-- The command the saga waits on a reply to, how often it was sent, when to send it again, and
-- whether the saga gave up (STUCK: visible to admins, who can retry or compensate it).
ALTER TABLE sagas ADD COLUMN pending_command TEXT;
ALTER TABLE sagas ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sagas ADD COLUMN next_retry_ms INTEGER;
ALTER TABLE sagas ADD COLUMN stuck INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sagas_retry ON sagas (next_retry_ms) WHERE stuck = 0;
