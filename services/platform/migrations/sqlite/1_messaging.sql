-- Transactional outbox: rows written in the same transaction as the state change they announce,
-- relayed to JetStream afterwards and deleted once the server acknowledged them.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL,
    traceparent TEXT,
    created_at INTEGER NOT NULL
);

-- Messages already applied, per consumer: a redelivered message finds its id here and is skipped.
CREATE TABLE IF NOT EXISTS processed_messages (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
