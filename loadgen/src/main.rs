//! `roombook-loadgen`: drives Roombook through its public gateway and reports what it carried.
//!
//! Three runs, one subcommand each:
//! - `sagas`: complete sagas (book → approve / deny / owner's cancel → settled) at a fixed
//!   concurrency, with latency histograms, error counts by kind, availability and, when given the
//!   NATS URL, the raw JetStream publish rate of the same broker so the saga rate reads as a ratio;
//! - `siege`: a siege-style availability run, C clients hammering `POST /bookings` for D seconds;
//! - `jetstream`: only the raw JetStream publish measurement.
//!
//! Every run is bounded in time (and optionally in count) and talks to the addresses it is given
//! (loopback by default); it prints progress lines to stderr, a summary to stdout and, with
//! `--json`, the figures as a JSON file.

mod api;
mod cli;
mod feed;
mod jetstream;
mod mix;
mod procstat;
mod report;
mod sagas;
mod setup;
mod siege;
mod slots;
mod stats;
mod tokens;

use std::process::ExitCode;

use clap::Parser as _;

/// The load generator shares the machine with the stack it measures: every CPU second it spends
/// is one the stack does not get. glibc's malloc was about a quarter of its time (BENCHMARKS.md,
/// Run 20); the services allocate with mimalloc too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roombook-loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roombook-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
