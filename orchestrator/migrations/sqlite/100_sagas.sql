-- One saga per booking. `revision` guards every update (optimistic concurrency between replicas);
-- `booking_version` / `confirm_version` are the newest event versions applied from each participant.
CREATE TABLE sagas (
    booking_id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    booking_cancelled INTEGER NOT NULL,
    room_id INTEGER,
    booking_user_id TEXT,
    start_ms INTEGER,
    end_ms INTEGER,
    confirm_id TEXT,
    outcome TEXT,
    booking_version INTEGER NOT NULL,
    confirm_version INTEGER NOT NULL,
    version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    settled_at INTEGER
);

CREATE INDEX sagas_state ON sagas (state, updated_at);

-- The saga's timeline: every message in and out, with the state it left the saga in.
CREATE TABLE saga_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    booking_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    direction TEXT NOT NULL,
    message_type TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    note TEXT
);

CREATE INDEX saga_steps_booking ON saga_steps (booking_id, id);
