-- What the notification service knows about each booking. BookingCreated is the only event that
-- carries the booker's address and the slot, so later events of the booking are described from
-- here. `last_booking_version` is the newest booking-service event already turned into mail: an
-- older one arriving late (a redelivery) is superseded and not mailed.
CREATE TABLE notification_bookings (
    booking_id TEXT PRIMARY KEY,
    created_seen BIGINT NOT NULL DEFAULT 0,
    booking_user_id TEXT,
    booking_user_email TEXT,
    room_id BIGINT,
    start_ms BIGINT,
    end_ms BIGINT,
    last_booking_version BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

-- One row per (event, recipient): the durable delivery record the sender works from.
-- Times are UTC instants in epoch milliseconds.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_version BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    booking_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    recipient_role TEXT NOT NULL CHECK (recipient_role IN ('BOOKER', 'ADMIN')),
    -- 'booker', or 'admin:' + the admin's address: unique per event with event_id.
    recipient_key TEXT NOT NULL,
    recipient TEXT,
    booking_user_id TEXT,
    room_id BIGINT,
    start_ms BIGINT,
    end_ms BIGINT,
    detail TEXT,
    confirm_id TEXT,
    deadline_ms BIGINT,
    subject TEXT,
    mail_message_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('WAITING', 'PENDING', 'SENT', 'FAILED', 'SKIPPED')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_at BIGINT,
    UNIQUE (event_id, recipient_key)
);

CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_booking ON notifications (booking_id, created_at);
CREATE INDEX notifications_user ON notifications (booking_user_id, created_at);
CREATE INDEX notifications_created ON notifications (created_at);
