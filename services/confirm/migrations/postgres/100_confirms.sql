-- One approval request per booking. A confirm closed before it was requested (the booking was
-- cancelled first) is kept as a tombstone with no booking details, so a late request is a no-op.
CREATE TABLE confirms (
    id TEXT PRIMARY KEY,
    booking_id TEXT NOT NULL UNIQUE,
    saga_id TEXT NOT NULL,
    room_id BIGINT,
    booking_user_id TEXT,
    start_ms BIGINT,
    end_ms BIGINT,
    status TEXT NOT NULL CHECK (status IN ('BOOKED', 'CONFIRMED', 'DENIED')),
    confirm_user_id TEXT,
    decided_at BIGINT,
    reason TEXT,
    requested BIGINT NOT NULL,
    closed_at BIGINT,
    close_reason TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX confirms_queue ON confirms (status, closed_at, created_at);
