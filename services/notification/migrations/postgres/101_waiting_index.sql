-- The sender looks for WAITING records (their booking not yet known) every round, oldest first.
-- They are few at any time, while notifications and notification_bookings grow with every
-- booking: this index lets the round start from the waiting records instead of from the
-- bookings (a plan chosen while the tables were nearly empty otherwise scans every booking).
CREATE INDEX notifications_waiting ON notifications (created_at) WHERE status = 'WAITING';
