-- The booking list: one row per booking, in two identical tables. One is the active view that
-- the API reads; the other is the shadow a rebuild fills from the event stream while the active
-- one keeps serving, before the two swap roles (booking_list_meta.active_table).
--
-- Times are UTC instants in epoch milliseconds. Each register of the projection keeps the
-- version of the event that last wrote it (see src/projection.rs); change_seq orders row
-- changes for the live feed.
CREATE TABLE booking_list_a (
    booking_id TEXT PRIMARY KEY,
    saga_id TEXT,
    room_id BIGINT,
    booking_user_id TEXT,
    start_ms BIGINT,
    end_ms BIGINT,
    booking_status TEXT,
    booking_ms BIGINT,
    cancel_reason TEXT,
    cancel_detail TEXT,
    confirm_id TEXT,
    confirm_status TEXT,
    approval_deadline_ms BIGINT,
    confirm_user_id TEXT,
    confirm_ms BIGINT,
    deny_reason TEXT,
    confirm_close_reason TEXT,
    saga_state TEXT,
    booking_version BIGINT NOT NULL,
    confirm_version BIGINT NOT NULL,
    decision_version BIGINT NOT NULL,
    closed_version BIGINT NOT NULL,
    saga_version BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    change_seq BIGINT NOT NULL
);
CREATE INDEX booking_list_a_user ON booking_list_a (booking_user_id, booking_ms);
CREATE INDEX booking_list_a_room ON booking_list_a (room_id, start_ms);
CREATE INDEX booking_list_a_change ON booking_list_a (change_seq);

CREATE TABLE booking_list_b (
    booking_id TEXT PRIMARY KEY,
    saga_id TEXT,
    room_id BIGINT,
    booking_user_id TEXT,
    start_ms BIGINT,
    end_ms BIGINT,
    booking_status TEXT,
    booking_ms BIGINT,
    cancel_reason TEXT,
    cancel_detail TEXT,
    confirm_id TEXT,
    confirm_status TEXT,
    approval_deadline_ms BIGINT,
    confirm_user_id TEXT,
    confirm_ms BIGINT,
    deny_reason TEXT,
    confirm_close_reason TEXT,
    saga_state TEXT,
    booking_version BIGINT NOT NULL,
    confirm_version BIGINT NOT NULL,
    decision_version BIGINT NOT NULL,
    closed_version BIGINT NOT NULL,
    saga_version BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    change_seq BIGINT NOT NULL
);
CREATE INDEX booking_list_b_user ON booking_list_b (booking_user_id, booking_ms);
CREATE INDEX booking_list_b_room ON booking_list_b (room_id, start_ms);
CREATE INDEX booking_list_b_change ON booking_list_b (change_seq);

-- One row: which table is active, the change counter, and the state of the latest rebuild.
-- Every projection write takes this row's lock (it claims a change_seq), which serialises it
-- with the rebuild's start and swap, and makes change_seq commit in order.
CREATE TABLE booking_list_meta (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    active_table TEXT NOT NULL,
    shadow_table TEXT,
    change_seq BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    rebuild_id TEXT,
    rebuild_state TEXT NOT NULL,
    rebuild_started_ms BIGINT,
    rebuild_finished_ms BIGINT,
    rebuild_heartbeat_ms BIGINT,
    rebuild_target_seq BIGINT,
    rebuild_replayed_seq BIGINT,
    rebuild_events BIGINT NOT NULL,
    rebuild_error TEXT
);
INSERT INTO booking_list_meta (id, active_table, change_seq, generation, rebuild_state, rebuild_events)
VALUES (1, 'booking_list_a', 0, 1, 'NEVER', 0);
