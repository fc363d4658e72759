CREATE TABLE rooms (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- Times are UTC instants in epoch milliseconds; a booking occupies [start_ms, end_ms).
CREATE TABLE bookings (
    id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    room_id INTEGER NOT NULL REFERENCES rooms (id),
    booking_user_id TEXT NOT NULL,
    booking_user_email TEXT,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('BOOKED', 'CONFIRMED', 'CANCELLED')),
    cancel_reason TEXT,
    cancel_detail TEXT,
    version INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    CHECK (end_ms > start_ms)
);

CREATE INDEX bookings_room_time ON bookings (room_id, start_ms);
CREATE INDEX bookings_user ON bookings (booking_user_id, created_at);
CREATE UNIQUE INDEX bookings_idempotency ON bookings (booking_user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- No double booking, enforced by the database: SQLite runs one writer at a time, so a trigger
-- that checks for an overlapping live booking is atomic with the write it guards.
CREATE TRIGGER bookings_no_overlap_insert BEFORE INSERT ON bookings
WHEN NEW.status <> 'CANCELLED' AND EXISTS (
    SELECT 1 FROM bookings b
    WHERE b.room_id = NEW.room_id AND b.status <> 'CANCELLED'
      AND b.start_ms < NEW.end_ms AND NEW.start_ms < b.end_ms)
BEGIN
    SELECT RAISE(ABORT, 'booking_overlap');
END;

CREATE TRIGGER bookings_no_overlap_update BEFORE UPDATE OF status, room_id, start_ms, end_ms ON bookings
WHEN NEW.status <> 'CANCELLED' AND EXISTS (
    SELECT 1 FROM bookings b
    WHERE b.id <> NEW.id AND b.room_id = NEW.room_id AND b.status <> 'CANCELLED'
      AND b.start_ms < NEW.end_ms AND NEW.start_ms < b.end_ms)
BEGIN
    SELECT RAISE(ABORT, 'booking_overlap');
END;
