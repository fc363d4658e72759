-- Applied message ids are forgotten after the retention period, oldest first (see
-- db::prune_processed). On SQLite the oldest are found by rowid, which needs no index.
CREATE INDEX IF NOT EXISTS processed_messages_age ON processed_messages (processed_at);
