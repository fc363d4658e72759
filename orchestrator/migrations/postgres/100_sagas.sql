-- One saga per booking. `revision` guards every update (optimistic concurrency between replicas);
-- `booking_version` / `confirm_version` are the newest event versions applied from each participant.
CREATE TABLE sagas (
    booking_id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    booking_cancelled BIGINT NOT NULL,
    room_id BIGINT,
    booking_user_id TEXT,
    start_ms BIGINT,
    end_ms BIGINT,
    confirm_id TEXT,
    outcome TEXT,
    booking_version BIGINT NOT NULL,
    confirm_version BIGINT NOT NULL,
    version BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    settled_at BIGINT
);

CREATE INDEX sagas_state ON sagas (state, updated_at);

-- The saga's timeline: every message in and out, with the state it left the saga in.
CREATE TABLE saga_steps (
    id BIGSERIAL PRIMARY KEY,
    booking_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    direction TEXT NOT NULL,
    message_type TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    note TEXT
);

CREATE INDEX saga_steps_booking ON saga_steps (booking_id, id);
