//! Only tests live in this crate (see `tests/`).
