-- The overlap look-ups made before an insert (to name the conflicting booking) and the
-- availability view read the bookings of a room that end after a given moment: the room's
-- calendar from then on, which stays small, instead of its whole history.
CREATE INDEX bookings_room_end ON bookings (room_id, end_ms);
