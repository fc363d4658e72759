-- Published rows are kept (marked, not deleted): the outbox doubles as the service's log of every
-- message it sent, from which the latest fact about a booking can be announced again.
ALTER TABLE outbox ADD COLUMN booking_id TEXT;
-- The Nats-Msg-Id to publish with when it differs from message_id (a re-announcement).
ALTER TABLE outbox ADD COLUMN publish_id TEXT;
ALTER TABLE outbox ADD COLUMN published_at BIGINT;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_booking ON outbox (booking_id, id);
