//! The shared platform of every Roombook service.
//!
//! It holds what the services must agree on — the message contract ([`contract`]) and the
//! JetStream topology ([`topology`]) — and the runtime every service is built from: database
//! access with migrations ([`db`]), the transactional outbox and its relay ([`outbox`]), the
//! hourly pruning of what is kept only for a while ([`retention`]), durable consumers with
//! dedup, backoff and dead letters ([`consumer`]), and the HTTP pieces ([`http`]): problem
//! details, health probes, identity headers and graceful serving.

pub mod appends;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod db;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod retention;
pub mod runtime;
pub mod shutdown;
pub mod sqlite_memory;
mod sqlite_writer;
pub mod telemetry;
pub mod time;
pub mod topology;
pub mod trace;

#[cfg(feature = "testkit")]
pub mod testkit;

/// Every service process allocates with mimalloc: handling a message allocates and frees many
/// small buffers, and glibc's malloc spent about an eighth of the machine's time on them under
/// load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
