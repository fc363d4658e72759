//! The command line and the wiring of a run: tokens, rooms, the terminal source, the broker
//! measurement, the load itself, and the report.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::time::Instant;

use crate::{
    api::Api,
    feed::{self, Watch},
    jetstream::{self, JsConfig},
    mix::{Action, Mix},
    procstat::{parse_watch, CpuProbe, Watched},
    report::{steady_min_max, BrokerRatio, RunConfig, SagaCounts, SagaReport},
    sagas::{self, SagaConfig},
    setup::{self, TerminalSource},
    siege::{self, SiegeConfig},
    slots::SlotPlan,
    stats::Recorder,
    tokens::{self, Minter, Tokens},
};

#[derive(Parser, Debug)]
#[command(
    name = "roombook-loadgen",
    version,
    about = "Drives Roombook sagas (or a siege-style run) through the gateway and reports sagas/s, latency percentiles, errors and availability"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Complete sagas: book → approve / deny / owner's cancel → settled.
    Sagas(SagasArgs),
    /// Siege-style availability run: C clients hammering POST /bookings for D seconds.
    Siege(SiegeArgs),
    /// Only the raw JetStream publish rate (scratch stream, deleted afterwards).
    Jetstream(JetstreamArgs),
}

/// Where the gateway is and who the load generator is to it.
#[derive(Args, Debug)]
struct Target {
    /// The gateway's base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8088")]
    gateway: String,
    /// The gateway's HS256 key; tokens are minted in-process with it.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A file holding the key (e.g. $DATA_DIR/jwt-secret of scripts/run).
    #[arg(long)]
    jwt_secret_file: Option<PathBuf>,
    /// Without a key: ALICE_TOKEN and ADMIN_TOKEN from this file (scripts/run's tokens.env);
    /// every virtual user is then alice.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    #[arg(long, env = "JWT_ISSUER", default_value = "roombook")]
    jwt_issuer: String,
    #[arg(long, env = "JWT_AUDIENCE", default_value = "roombook-api")]
    jwt_audience: String,
    /// Virtual users (distinct token subjects); booking i is made by user i % N.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Fresh rooms to create for this run (as admin); 0 books the existing rooms instead.
    #[arg(long, default_value_t = 16)]
    rooms: usize,
    /// Each HTTP call's time limit.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    request_timeout: Duration,
    /// How often to print a progress line (stderr).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    progress_every: Duration,
    /// How long to wait for the gateway to answer before starting.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    ready_timeout: Duration,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Free text recorded in the JSON (e.g. "sqlite, release").
    #[arg(long)]
    label: Option<String>,
    /// Report the CPU time of this process during the run: NAME=PID (repeatable).
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<Watched>,
}

#[derive(Args, Debug)]
struct SagasArgs {
    #[command(flatten)]
    target: Target,
    /// Sagas in flight at once.
    #[arg(short, long, default_value_t = 64)]
    concurrency: usize,
    /// How long to start new sagas (after the warm-up); sagas in flight then are finished.
    #[arg(short, long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Stop after this many sagas (whichever comes first with --duration).
    #[arg(short = 'n', long)]
    sagas: Option<u64>,
    /// Run this long first without measuring (latencies and the rate leave it out).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// What follows each booking: approve=W,deny=W,cancel=W.
    #[arg(long, default_value_t = Mix::default())]
    mix: Mix,
    /// Where to see that a saga settled.
    #[arg(long, value_enum, default_value_t = TerminalSource::Auto)]
    terminal: TerminalSource,
    /// A saga not settled this long after its booking fails.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    saga_timeout: Duration,
    /// First delay between polls of one saga (grows by half each poll).
    #[arg(long, value_parser = parse_duration, default_value = "5ms")]
    poll_min: Duration,
    /// Longest delay between polls.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    poll_max: Duration,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Exit 1 unless every saga succeeded and no error of any kind was seen.
    #[arg(long)]
    require_zero_errors: bool,
}

#[derive(Args, Debug)]
struct BrokerArgs {
    /// NATS server of the stack: measures its raw JetStream publish rate before the load and
    /// counts the publishes the sagas cost. Without it the broker figures are left out.
    #[arg(long)]
    nats_url: Option<String>,
    /// Messages published with async acks.
    #[arg(long, default_value_t = 50_000)]
    js_async: u64,
    /// Messages published awaiting each ack in turn.
    #[arg(long, default_value_t = 5_000)]
    js_awaited: u64,
    /// Payload size of the scratch messages (a saga envelope is ~300-500 bytes).
    #[arg(long, default_value_t = 400)]
    js_payload: usize,
    /// Skip the raw publish measurement (still counts publishes per saga with --nats-url).
    #[arg(long)]
    no_jetstream: bool,
}

#[derive(Args, Debug)]
struct SiegeArgs {
    #[command(flatten)]
    target: Target,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 100)]
    concurrent: usize,
    /// How long to send.
    #[arg(short = 't', long, alias = "duration", value_parser = parse_duration, default_value = "60s")]
    time: Duration,
    /// Exit 1 if availability (answered / attempted) is below this percentage.
    #[arg(long)]
    require_availability: Option<f64>,
}

#[derive(Args, Debug)]
struct JetstreamArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value_t = 50_000)]
    js_async: u64,
    #[arg(long, default_value_t = 5_000)]
    js_awaited: u64,
    #[arg(long, default_value_t = 400)]
    js_payload: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `250ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 500ms, 30s, 2m"))?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => value / 1000.0,
        "" | "s" | "sec" | "secs" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (ms, s, m, h)")),
    };
    if !(0.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sagas(args) => run_sagas(args).await,
        Command::Siege(args) => run_siege(args).await,
        Command::Jetstream(args) => {
            let report = jetstream::measure(&JsConfig {
                url: args.nats_url,
                async_messages: args.js_async,
                awaited_messages: args.js_awaited,
                payload_bytes: args.js_payload,
                phase_limit: Duration::from_secs(60),
            })
            .await?;
            println!(
                "JetStream raw publish: {:.0} msg/s with async acks ({} msgs), {:.0} msg/s awaiting each ack ({} msgs); {} B payloads, file storage",
                report.async_acks.msgs_per_sec,
                report.async_acks.messages,
                report.awaited_acks.msgs_per_sec,
                report.awaited_acks.messages,
                report.payload_bytes
            );
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A short random tag for this run's user names and rooms.
fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

fn load_tokens(t: &Target, tag: &str, ttl: Duration) -> anyhow::Result<Tokens> {
    let secret = match (&t.jwt_secret, &t.jwt_secret_file) {
        (Some(s), _) if !s.trim().is_empty() => Some(s.trim().to_string()),
        (_, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    match (secret, &t.tokens_file) {
        (Some(secret), _) => Minter::new(&secret, &t.jwt_issuer, &t.jwt_audience, ttl)
            .tokens(&format!("lg{tag}"), t.users),
        (None, Some(path)) => tokens::from_tokens_file(path),
        (None, None) => anyhow::bail!(
            "no way to get tokens: set JWT_SECRET, or pass --jwt-secret-file or --tokens-file"
        ),
    }
}

/// Tokens, rooms and the slot plan, made with a setup-only client whose calls stay out of the
/// run's availability figures.
async fn prepare(t: &Target, tag: &str, ttl: Duration) -> anyhow::Result<(Tokens, SlotPlan, Api)> {
    let tokens = load_tokens(t, tag, ttl)?;
    let setup_api = Api::new(
        &t.gateway,
        t.request_timeout,
        4,
        Arc::new(Recorder::new(std::time::Instant::now())),
    )?;
    setup::wait_ready(&setup_api, &tokens.admin, t.ready_timeout).await?;
    let rooms = setup::rooms(&setup_api, &tokens.admin, t.rooms, tag).await?;
    let offset_days = u32::from_str_radix(tag, 16).unwrap_or(0) % 20_000;
    let plan = SlotPlan::new(
        rooms,
        SlotPlan::base_for_run(chrono::Utc::now(), offset_days),
    )?;
    Ok((tokens, plan, setup_api))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("loadgen: figures written to {}", path.display());
    Ok(())
}

async fn run_sagas(args: SagasArgs) -> anyhow::Result<ExitCode> {
    let t = &args.target;
    let tag = run_tag();
    let ttl = args.warmup + args.duration + Duration::from_secs(3600);
    let (tokens, plan, setup_api) = prepare(t, &tag, ttl).await?;
    let (terminal, why) = setup::resolve_terminal(&setup_api, &tokens.admin, args.terminal).await?;
    eprintln!(
        "loadgen: run {tag}: {} rooms, {} users, terminal check via {terminal:?} ({why})",
        plan.rooms().len(),
        tokens.users.len()
    );

    let broker = &args.broker;
    let (mut js_report, mut js_error) = (None, None);
    if let (Some(url), false) = (&broker.nats_url, broker.no_jetstream) {
        eprintln!(
            "loadgen: measuring raw JetStream publishing ({} async-ack, {} awaited-ack messages)",
            broker.js_async, broker.js_awaited
        );
        match jetstream::measure(&JsConfig {
            url: url.clone(),
            async_messages: broker.js_async,
            awaited_messages: broker.js_awaited,
            payload_bytes: broker.js_payload,
            phase_limit: Duration::from_secs(30),
        })
        .await
        {
            Ok(r) => {
                eprintln!(
                    "loadgen: JetStream: {:.0} msg/s async acks, {:.0} msg/s awaited acks",
                    r.async_acks.msgs_per_sec, r.awaited_acks.msgs_per_sec
                );
                js_report = Some(r);
            }
            Err(e) => {
                eprintln!("loadgen: JetStream measurement failed: {e:#}");
                js_error = Some(format!("{e:#}"));
            }
        }
    }
    let sequences_before = match &broker.nats_url {
        Some(url) => jetstream::stream_sequences(url).await.ok(),
        None => None,
    };

    let started = Instant::now();
    let stats = Arc::new(Recorder::new(started.into_std()));
    let api = Api::new(
        &t.gateway,
        t.request_timeout,
        args.concurrency * 2,
        stats.clone(),
    )?;
    let cfg = SagaConfig {
        concurrency: args.concurrency,
        duration: args.duration,
        max_sagas: args.sagas,
        warmup: args.warmup,
        mix: args.mix.clone(),
        terminal,
        saga_timeout: args.saga_timeout,
        request_timeout: t.request_timeout,
        poll_min: args.poll_min,
        poll_max: args.poll_max,
        progress_every: t.progress_every,
    };
    let run_config = RunConfig {
        gateway: t.gateway.clone(),
        concurrency: args.concurrency,
        duration_secs: args.duration.as_secs_f64(),
        warmup_secs: args.warmup.as_secs_f64(),
        max_sagas: args.sagas,
        mix: args.mix.to_string(),
        users: tokens.users.len(),
        rooms: plan.rooms().len(),
        terminal_source: format!("{terminal:?}"),
        terminal_source_why: why,
        saga_timeout_secs: args.saga_timeout.as_secs_f64(),
        request_timeout_secs: t.request_timeout.as_secs_f64(),
        poll_min_ms: args.poll_min.as_secs_f64() * 1000.0,
        poll_max_ms: args.poll_max.as_secs_f64() * 1000.0,
    };
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    eprintln!(
        "loadgen: {} workers for {}s{}, mix {}",
        args.concurrency,
        args.duration.as_secs_f64(),
        args.sagas
            .map_or(String::new(), |n| format!(" (at most {n} sagas)")),
        args.mix
    );
    let feed = if terminal == TerminalSource::Feed {
        let (watch, task) =
            Watch::start(&t.gateway, &tokens.admin, stats.clone(), t.request_timeout).await?;
        Some((watch, task))
    } else {
        None
    };
    let probe = CpuProbe::start(t.watch.clone());
    let ctx = Arc::new(sagas::Ctx {
        api,
        watch: feed.as_ref().map(|(watch, _)| watch.clone()),
        stats: stats.clone(),
        tokens,
        plan,
        cfg,
    });
    let times = sagas::run(ctx, started).await;
    let cpu = probe.finish();
    if let Some((_, task)) = feed {
        task.abort();
    }

    let sequences_after = match &broker.nats_url {
        Some(url) => jetstream::stream_sequences(url).await.ok(),
        None => None,
    };

    let snap = stats.snapshot();
    let elapsed = times.finished - times.started;
    let measured = times.finished.saturating_duration_since(times.measure_from);
    let measured_secs = measured.as_secs_f64().max(1e-9);
    let rate = snap.ok as f64 / measured_secs;
    // The steady window starts once the first measured sagas can have finished (a p95 saga
    // after the warm-up) and ends at the last whole second.
    let fill_secs = snap.latency(sagas::SAGA).p95_ms / 1000.0;
    let from_sec = (times.measure_from - times.started).as_secs_f64() + fill_secs;
    let (per_min, per_max) = steady_min_max(&snap.per_second, from_sec, elapsed.as_secs_f64());
    let warmup_ok = snap.counter("warmupSagas");
    let finished = snap.ok + snap.failed + warmup_ok;

    let broker_ratio = match (&sequences_before, &sequences_after) {
        (Some(before), Some(after)) if finished > 0 => {
            let (by_stream, total) = jetstream::published_between(before, after);
            let per_saga = total as f64 / finished as f64;
            let publishes_per_sec = rate * per_saga;
            let share = |raw: f64| (raw > 0.0).then(|| publishes_per_sec * 100.0 / raw);
            let ceiling = |raw: f64| (raw > 0.0 && per_saga > 0.0).then(|| raw / per_saga);
            Some(BrokerRatio {
                publishes_per_saga: per_saga,
                publishes_by_stream: by_stream,
                publishes_per_sec,
                pct_of_async_publish_rate: js_report
                    .as_ref()
                    .and_then(|j| share(j.async_acks.msgs_per_sec)),
                pct_of_awaited_publish_rate: js_report
                    .as_ref()
                    .and_then(|j| share(j.awaited_acks.msgs_per_sec)),
                saga_ceiling_async: js_report
                    .as_ref()
                    .and_then(|j| ceiling(j.async_acks.msgs_per_sec)),
                saga_ceiling_awaited: js_report
                    .as_ref()
                    .and_then(|j| ceiling(j.awaited_acks.msgs_per_sec)),
            })
        }
        _ => None,
    };

    let ok_by_action: BTreeMap<&'static str, u64> = Action::ALL
        .iter()
        .filter(|a| args.mix.weight(**a) > 0)
        .map(|a| (a.name(), snap.counter(&format!("ok.{}", a.name()))))
        .collect();
    let polls_per_saga: BTreeMap<&'static str, f64> =
        [("confirm", "polls.confirm"), ("settle", "polls.settle")]
            .into_iter()
            .filter(|(_, c)| snap.counters.contains_key(c))
            .map(|(name, c)| {
                (
                    name,
                    snap.counter(c) as f64 / (snap.ok + warmup_ok).max(1) as f64,
                )
            })
            .collect();
    let feed_events_per_saga = snap
        .counters
        .contains_key(feed::FEED_EVENTS)
        .then(|| snap.counter(feed::FEED_EVENTS) as f64 / (snap.ok + warmup_ok).max(1) as f64);
    let latency_ms = [
        sagas::CREATE,
        sagas::CONFIRM_VISIBLE,
        sagas::DECIDE,
        sagas::SETTLE_VISIBLE,
        sagas::SAGA,
    ]
    .into_iter()
    .map(|n| (n, snap.latency(n)))
    .collect();
    let errors_total = snap.errors.values().sum();
    let report = SagaReport {
        kind: "sagas",
        label: t.label.clone(),
        started_at,
        config: run_config,
        elapsed_secs: elapsed.as_secs_f64(),
        measured_secs,
        sagas: SagaCounts {
            started: times.sagas_started,
            ok: snap.ok,
            ok_by_action,
            failed: snap.failed,
            warmup_ok,
            rate_per_sec: rate,
            per_second: snap.per_second.clone(),
            per_second_min: per_min,
            per_second_max: per_max,
        },
        latency_ms,
        errors: snap.errors.clone(),
        errors_total,
        availability: SagaReport::availability_of(snap.ok + warmup_ok, snap.failed, snap.http),
        polls_per_saga,
        feed_events_per_saga,
        abandoned: times.abandoned,
        jetstream: js_report,
        jetstream_error: js_error,
        broker: broker_ratio,
        cpu: Some(cpu),
    };
    println!("{}", report.summary());
    if let Some(path) = &t.json {
        write_json(path, &report)?;
    }
    if args.require_zero_errors {
        let expected = args.sagas;
        let all_done = expected.is_none_or(|n| snap.ok + warmup_ok == n);
        if errors_total > 0 || snap.failed > 0 || !all_done || snap.ok == 0 {
            eprintln!(
                "loadgen: FAILED --require-zero-errors: {} ok, {} failed, {errors_total} errors{}",
                snap.ok + warmup_ok,
                snap.failed,
                expected.map_or(String::new(), |n| format!(", {n} expected"))
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SiegeReport {
    kind: &'static str,
    label: Option<String>,
    started_at: String,
    gateway: String,
    clients: usize,
    duration_secs: f64,
    users: usize,
    rooms: usize,
    figures: siege::SiegeFigures,
    errors: BTreeMap<String, u64>,
    cpu: crate::procstat::CpuReport,
}

async fn run_siege(args: SiegeArgs) -> anyhow::Result<ExitCode> {
    let t = &args.target;
    let tag = run_tag();
    let (tokens, plan, _) = prepare(t, &tag, args.time + Duration::from_secs(3600)).await?;
    eprintln!(
        "loadgen: siege {tag}: {} clients for {}s on POST /bookings ({} rooms, {} users)",
        args.concurrent,
        args.time.as_secs_f64(),
        plan.rooms().len(),
        tokens.users.len()
    );
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let stats = Arc::new(Recorder::new(started.into_std()));
    let api = Api::new(
        &t.gateway,
        t.request_timeout,
        args.concurrent * 2,
        stats.clone(),
    )?;
    let (users, rooms) = (tokens.users.len(), plan.rooms().len());
    let probe = CpuProbe::start(t.watch.clone());
    let ctx = Arc::new(siege::Ctx {
        api,
        stats: stats.clone(),
        tokens,
        plan,
        cfg: SiegeConfig {
            clients: args.concurrent,
            duration: args.time,
            request_timeout: t.request_timeout,
            progress_every: t.progress_every,
        },
    });
    let figures = siege::run(ctx, started).await;
    let cpu = probe.finish();
    println!(
        "Siege-style run: {} clients, POST /bookings",
        args.concurrent
    );
    print!("{}", siege::summary(&figures));
    let errors = stats.snapshot().errors;
    for (kind, n) in &errors {
        println!("  {n:>8}  {kind}");
    }
    let report = SiegeReport {
        kind: "siege",
        label: t.label.clone(),
        started_at,
        gateway: t.gateway.clone(),
        clients: args.concurrent,
        duration_secs: args.time.as_secs_f64(),
        users,
        rooms,
        figures: figures.clone(),
        errors,
        cpu,
    };
    if let Some(path) = &t.json {
        write_json(path, &report)?;
    }
    if let Some(min) = args.require_availability {
        if figures.availability_pct < min {
            eprintln!(
                "loadgen: FAILED --require-availability {min}: {:.2} %",
                figures.availability_pct
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("9999h").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_benchmark_plan() {
        let cli = Cli::try_parse_from(["roombook-loadgen", "sagas", "--jwt-secret", "k"]).unwrap();
        let Command::Sagas(a) = cli.command else {
            panic!("expected sagas")
        };
        assert_eq!(a.concurrency, 64);
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.mix, Mix::default());
        let cli =
            Cli::try_parse_from(["roombook-loadgen", "siege", "-c", "100", "-t", "60s"]).unwrap();
        let Command::Siege(s) = cli.command else {
            panic!("expected siege")
        };
        assert_eq!((s.concurrent, s.time), (100, Duration::from_secs(60)));
    }
}
