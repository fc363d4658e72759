-- The approval deadlines the timer looks for each tick are those of sagas still waiting for a
-- decision. The deadline index held every saga whose expiry was never requested, settled ones
-- included (their deadlines stay in the past for good), so the planners passed it over for the
-- state index and read the whole approval queue each tick, due or not. This one holds only the
-- sagas that can still expire, in deadline order: a tick reads the due ones and stops.
DROP INDEX sagas_deadline;
CREATE INDEX sagas_waiting_deadline ON sagas (deadline_ms)
    WHERE expiry_requested = 0 AND state IN ('STARTED', 'AWAITING_APPROVAL');
