-- The approval deadline (a durable timer) and whether its expiry was already requested.
ALTER TABLE sagas ADD COLUMN deadline_ms INTEGER;
ALTER TABLE sagas ADD COLUMN expiry_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sagas_deadline ON sagas (deadline_ms) WHERE expiry_requested = 0;
