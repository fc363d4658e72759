-- No decision is accepted from the deadline on (NULL for tombstones and older rows).
ALTER TABLE confirms ADD COLUMN deadline_ms INTEGER;
