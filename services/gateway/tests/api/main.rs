//! The gateway started in-process on port 0: in front of small echo upstreams that report what
//! they received, and in front of the real services (`stack`).

mod auth;
mod cli;
mod fault;
mod helpers;
mod jwks;
mod layers;
mod matrix;
mod openapi;
mod proxy;
mod resilience;
mod stack;
mod walkthrough;
mod web;
