CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE rooms (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Times are UTC instants in epoch milliseconds; a booking occupies [start_ms, end_ms).
CREATE TABLE bookings (
    id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    room_id BIGINT NOT NULL REFERENCES rooms (id),
    booking_user_id TEXT NOT NULL,
    booking_user_email TEXT,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('BOOKED', 'CONFIRMED', 'CANCELLED')),
    cancel_reason TEXT,
    cancel_detail TEXT,
    version BIGINT NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (end_ms > start_ms),
    -- No double booking, enforced by the database: two live bookings of one room never overlap.
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (
        room_id WITH =,
        int8range(start_ms, end_ms) WITH &&
    ) WHERE (status <> 'CANCELLED')
);

CREATE INDEX bookings_user ON bookings (booking_user_id, created_at);
CREATE UNIQUE INDEX bookings_idempotency ON bookings (booking_user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
