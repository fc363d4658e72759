-- One approval request per booking. A confirm closed before it was requested (the booking was
-- cancelled first) is kept as a tombstone with no booking details, so a late request is a no-op.
CREATE TABLE confirms (
    id TEXT PRIMARY KEY,
    booking_id TEXT NOT NULL UNIQUE,
    saga_id TEXT NOT NULL,
    room_id INTEGER,
    booking_user_id TEXT,
    start_ms INTEGER,
    end_ms INTEGER,
    status TEXT NOT NULL CHECK (status IN ('BOOKED', 'CONFIRMED', 'DENIED')),
    confirm_user_id TEXT,
    decided_at INTEGER,
    reason TEXT,
    requested INTEGER NOT NULL,
    closed_at INTEGER,
    close_reason TEXT,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX confirms_queue ON confirms (status, closed_at, created_at);
