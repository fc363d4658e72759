//! The gateway started in-process on port 0, in front of small echo upstreams that report what
//! they received.

mod auth;
mod cli;
mod helpers;
mod proxy;
