//! The bookinglist service (being built).
