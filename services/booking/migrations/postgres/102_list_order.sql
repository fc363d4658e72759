-- `GET /bookings` lists in order of start (then id). An admin's list without a user or room
-- filter had no index in that order: every page read and sorted the whole table. This one
-- serves it a page at a time. Neither column changes after the insert, so updates leave it be.
CREATE INDEX bookings_start ON bookings (start_ms, id);
