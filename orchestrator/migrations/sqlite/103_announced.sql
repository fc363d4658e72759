-- The state last published in SagaStateChanged. Sagas stored before it existed had every state
-- published, so their current one was.
ALTER TABLE sagas ADD COLUMN announced_state TEXT;
UPDATE sagas SET announced_state = state;
