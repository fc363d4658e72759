//! The saga run: C workers, each driving one complete saga at a time through the gateway until
//! the run's time (or saga count) is up.
//!
//! One saga, for booking number `i`:
//! 1. `POST /bookings` as virtual user `i % N` on slot `i` → 201 BOOKED (the *create* latency);
//! 2. wait until the approval request exists: its row in the booking list's live feed shows a
//!    confirm id, or (polling sources) `GET /confirms?bookingId=…` as admin lists it;
//! 3. per the mix: `PATCH /confirms/{id}` CONFIRMED or DENIED as admin, or `DELETE /bookings/{id}`
//!    as the owner;
//! 4. wait until the terminal source (the feed, or a polled booking list or saga view) shows the
//!    settled state the path must end in (the *saga* latency runs from 1 to here).
//!
//! Polls back off from `poll_min` to `poll_max`; every call has the request timeout and the
//! whole saga the saga timeout, so a run always ends.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{
    api::{Api, Failure, Reply},
    feed::{FeedRow, Watch},
    mix::{Action, Mix},
    setup::TerminalSource,
    slots::{rfc3339, SlotPlan},
    stats::Recorder,
    tokens::Tokens,
};

pub struct SagaConfig {
    pub concurrency: usize,
    pub duration: Duration,
    pub max_sagas: Option<u64>,
    pub warmup: Duration,
    pub mix: Mix,
    /// Resolved: never `Auto`.
    pub terminal: TerminalSource,
    pub saga_timeout: Duration,
    pub request_timeout: Duration,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub progress_every: Duration,
}

pub struct Ctx {
    pub api: Api,
    /// The live feed, when the terminal source is [`TerminalSource::Feed`].
    pub watch: Option<Arc<Watch>>,
    pub stats: Arc<Recorder>,
    pub tokens: Tokens,
    pub plan: SlotPlan,
    pub cfg: SagaConfig,
}

/// Histogram names.
pub const CREATE: &str = "create";
pub const CONFIRM_VISIBLE: &str = "confirmVisible";
pub const DECIDE: &str = "decide";
pub const SETTLE_VISIBLE: &str = "settleVisible";
pub const SAGA: &str = "saga";

pub struct RunTimes {
    pub started: Instant,
    pub measure_from: Instant,
    pub finished: Instant,
    pub sagas_started: u64,
    /// Sagas still running at the hard time limit, abandoned.
    pub abandoned: u64,
}

/// Runs the saga load and returns when every worker is done (or the hard limit hit).
pub async fn run(ctx: Arc<Ctx>, started: Instant) -> RunTimes {
    let cfg = &ctx.cfg;
    let measure_from = started + cfg.warmup;
    let stop_at = started + cfg.warmup + cfg.duration;
    // Every saga is bounded by its timeout plus the calls that may start just before it.
    let hard_stop = stop_at + cfg.saga_timeout + cfg.request_timeout * 2 + Duration::from_secs(5);
    let next = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));

    let progress = tokio::spawn(progress_lines(
        ctx.clone(),
        started,
        measure_from,
        in_flight.clone(),
        next.clone(),
    ));

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..cfg.concurrency.max(1) {
        let ctx = ctx.clone();
        let next = next.clone();
        let in_flight = in_flight.clone();
        workers.spawn(async move {
            loop {
                if Instant::now() >= stop_at {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if ctx.cfg.max_sagas.is_some_and(|max| i >= max) {
                    break;
                }
                let measured = Instant::now() >= measure_from;
                in_flight.fetch_add(1, Ordering::Relaxed);
                one_saga(&ctx, i, measured).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    let all_done = async { while workers.join_next().await.is_some() {} };
    let abandoned = if tokio::time::timeout_at(hard_stop, all_done).await.is_err() {
        let left = in_flight.load(Ordering::Relaxed);
        workers.abort_all();
        eprintln!("loadgen: hard time limit reached; abandoning {left} saga(s) in flight");
        for _ in 0..left {
            ctx.stats.failure("run: abandoned at the time limit".into());
        }
        left
    } else {
        0
    };
    progress.abort();
    let started_count = next.load(Ordering::Relaxed);
    RunTimes {
        started,
        measure_from,
        finished: Instant::now(),
        sagas_started: ctx
            .cfg
            .max_sagas
            .map_or(started_count, |m| started_count.min(m)),
        abandoned,
    }
}

async fn progress_lines(
    ctx: Arc<Ctx>,
    started: Instant,
    measure_from: Instant,
    in_flight: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
) {
    let every = ctx.cfg.progress_every.max(Duration::from_millis(200));
    let mut tick = tokio::time::interval_at(started + every, every);
    let (mut last_ok, mut last_at) = (0u64, started);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let (ok, failed, calls, saga_p99) = ctx.stats.progress(SAGA);
        let create_p99 = ctx.stats.progress(CREATE).3;
        let rate = (ok - last_ok) as f64 / (now - last_at).as_secs_f64();
        let phase = if now < measure_from { " warmup" } else { "" };
        eprintln!(
            "[{:>6.1}s{phase}] sagas ok {ok} ({rate:.1}/s) failed {failed} in flight {} \
             started {} | http calls {calls} | p99 create {} saga {}",
            (now - started).as_secs_f64(),
            in_flight.load(Ordering::Relaxed),
            next.load(Ordering::Relaxed),
            crate::stats::fmt_ms(create_p99),
            crate::stats::fmt_ms(saga_p99),
        );
        (last_ok, last_at) = (ok, now);
    }
}

/// Doubles from `min` by half again each time up to `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            max: max.max(min),
        }
    }

    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 3 / 2).min(self.max);
        d
    }
}

async fn one_saga(ctx: &Ctx, i: u64, measured: bool) {
    let action = ctx.cfg.mix.pick(i);
    let t0 = Instant::now();
    let result = drive(ctx, i, action, t0, measured).await;
    let end = Instant::now();
    let stats = &ctx.stats;
    match result {
        Ok(()) if measured => {
            stats.latency(SAGA, end - t0);
            stats.success(end.into_std());
            stats.count(ok_counter(action), 1);
        }
        Ok(()) => stats.count("warmupSagas", 1),
        Err((step, failure)) => stats.failure(failure.kind(step)),
    }
}

fn ok_counter(action: Action) -> &'static str {
    match action {
        Action::Approve => "ok.approve",
        Action::Deny => "ok.deny",
        Action::Cancel => "ok.cancel",
    }
}

type StepResult<T> = Result<T, (&'static str, Failure)>;

async fn drive(ctx: &Ctx, i: u64, action: Action, t0: Instant, measured: bool) -> StepResult<()> {
    let cfg = &ctx.cfg;
    let deadline = t0 + cfg.saga_timeout;
    let user = (i % ctx.tokens.users.len() as u64) as usize;
    let user_token = ctx.tokens.users[user].as_str();
    let admin = ctx.tokens.admin.as_str();
    let record = |name: &'static str, d: Duration| {
        if measured {
            ctx.stats.latency(name, d);
        }
    };

    // 1. Book.
    let slot = ctx.plan.slot(i);
    let body = json!({
        "roomId": slot.room,
        "useStartDtm": rfc3339(slot.start),
        "useEndDtm": rfc3339(slot.end),
    });
    let reply = ctx
        .api
        .expect(
            Method::POST,
            "/bookings",
            user_token,
            Some(&body),
            StatusCode::CREATED,
        )
        .await
        .map_err(|f| ("create", f))?;
    let created = Instant::now();
    record(CREATE, created - t0);
    let booking = reply.json().unwrap_or(Value::Null);
    let booking_id = booking
        .get("id")
        .and_then(Value::as_str)
        .ok_or(("create", Failure::BadBody("no id".into())))?
        .to_string();
    if booking.get("status").and_then(Value::as_str) != Some("BOOKED") {
        return Err(("create", Failure::BadBody("status is not BOOKED".into())));
    }

    // 2. The approval request.
    let confirm_id = match &ctx.watch {
        Some(watch) => watch
            .wait_for(&booking_id, deadline, |row| row.confirm_id.is_some())
            .await
            .and_then(|row| row.confirm_id)
            .ok_or(("confirm-feed", Failure::GaveUp(cfg.saga_timeout)))?,
        None => poll_confirm(ctx, &booking_id, deadline).await?,
    };
    let decided_at = Instant::now();
    record(CONFIRM_VISIBLE, decided_at - created);

    // 3. The decision (or the owner's cancel).
    let (method, path, token, body) = match action {
        Action::Approve => (
            Method::PATCH,
            format!("/confirms/{confirm_id}"),
            admin,
            Some(json!({"status": "CONFIRMED"})),
        ),
        Action::Deny => (
            Method::PATCH,
            format!("/confirms/{confirm_id}"),
            admin,
            Some(json!({"status": "DENIED", "reason": "loadgen: room unavailable"})),
        ),
        Action::Cancel => (
            Method::DELETE,
            format!("/bookings/{booking_id}"),
            user_token,
            None,
        ),
    };
    let step = match action {
        Action::Approve => "approve",
        Action::Deny => "deny",
        Action::Cancel => "cancel",
    };
    ctx.api
        .expect(method, &path, token, body.as_ref(), StatusCode::OK)
        .await
        .map_err(|f| (step, f))?;
    let sent = Instant::now();
    record(DECIDE, sent - decided_at);

    // 4. Settled, as seen by the terminal source.
    match &ctx.watch {
        Some(watch) => {
            let row = watch
                .wait_for(&booking_id, deadline, |row| {
                    settled_feed_row(action, row) != Settle::Pending
                })
                .await;
            watch.forget(&booking_id);
            match row.map(|r| settled_feed_row(action, &r)) {
                Some(Settle::Done) => {}
                Some(Settle::Wrong(got)) => {
                    return Err((
                        "settle",
                        Failure::WrongOutcome {
                            got,
                            expected: action.expected_saga_state().into(),
                        },
                    ))
                }
                _ => return Err(("settle-feed", Failure::GaveUp(cfg.saga_timeout))),
            }
        }
        None => poll_settled(ctx, &booking_id, action, user_token, deadline).await?,
    }
    record(SETTLE_VISIBLE, Instant::now() - sent);
    Ok(())
}

/// Polls `GET /confirms?bookingId=` as admin until the approval request is listed.
async fn poll_confirm(ctx: &Ctx, booking_id: &str, deadline: Instant) -> StepResult<String> {
    let cfg = &ctx.cfg;
    let confirm_path = format!("/confirms?bookingId={booking_id}");
    let mut backoff = Backoff::new(cfg.poll_min, cfg.poll_max);
    let mut polls = 0u64;
    let confirm_id = loop {
        tokio::time::sleep(backoff.delay()).await;
        polls += 1;
        let found = poll(
            ctx,
            "confirm-poll",
            Method::GET,
            &confirm_path,
            &ctx.tokens.admin,
        )
        .await
        .map_err(|f| ("confirm-poll", f))?
        .and_then(|r| first_confirm_id(&r));
        if let Some(id) = found {
            break id;
        }
        if Instant::now() >= deadline {
            return Err(("confirm-poll", Failure::GaveUp(cfg.saga_timeout)));
        }
    };
    ctx.stats.count("polls.confirm", polls);
    Ok(confirm_id)
}

/// Polls the terminal source until it shows the settled state of `action`'s path.
async fn poll_settled(
    ctx: &Ctx,
    booking_id: &str,
    action: Action,
    user_token: &str,
    deadline: Instant,
) -> StepResult<()> {
    let cfg = &ctx.cfg;
    let (path, token) = match cfg.terminal {
        TerminalSource::BookingList => (format!("/bookingLists/{booking_id}"), user_token),
        _ => (format!("/sagas/{booking_id}"), ctx.tokens.admin.as_str()),
    };
    let mut backoff = Backoff::new(cfg.poll_min, cfg.poll_max);
    let mut polls = 0u64;
    loop {
        tokio::time::sleep(backoff.delay()).await;
        polls += 1;
        if let Some(reply) = poll(ctx, "settle-poll", Method::GET, &path, token)
            .await
            .map_err(|f| ("settle-poll", f))?
        {
            match settled(cfg.terminal, action, &reply) {
                Settle::Done => break,
                Settle::Pending => {}
                Settle::Wrong(got) => {
                    return Err((
                        "settle",
                        Failure::WrongOutcome {
                            got,
                            expected: action.expected_saga_state().into(),
                        },
                    ))
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(("settle-poll", Failure::GaveUp(cfg.saga_timeout)));
        }
    }
    ctx.stats.count("polls.settle", polls);
    Ok(())
}

/// One poll: `Some(reply)` for a 200, `None` for "not there yet" (404) or a failure worth
/// retrying (5xx, no answer: counted as errors, the saga goes on); other answers end the saga.
async fn poll(
    ctx: &Ctx,
    step: &'static str,
    method: Method,
    path: &str,
    token: &str,
) -> Result<Option<Reply>, Failure> {
    match ctx.api.send(method, path, token, None).await {
        Ok(r) if r.status == StatusCode::OK => Ok(Some(r)),
        Ok(r) if r.status == StatusCode::NOT_FOUND => Ok(None),
        Ok(r) if r.status.is_server_error() => {
            ctx.stats
                .error(format!("{} (retried)", Failure::from_reply(&r).kind(step)));
            Ok(None)
        }
        Ok(r) => Err(Failure::from_reply(&r)),
        Err(f) => {
            ctx.stats.error(format!("{} (retried)", f.kind(step)));
            Ok(None)
        }
    }
}

/// The id of the first confirm in a `GET /confirms` answer (a JSON array, or `{items: […]}`).
fn first_confirm_id(reply: &Reply) -> Option<String> {
    let v = reply.json()?;
    let list = v
        .as_array()
        .or_else(|| v.get("items").and_then(Value::as_array))?;
    let first = list.first()?;
    first.get("id").and_then(Value::as_str).map(str::to_string)
}

#[derive(Debug, PartialEq, Eq)]
enum Settle {
    Done,
    Pending,
    /// Settled in another state than the path's.
    Wrong(String),
}

const SETTLED_STATES: [&str; 3] = ["COMPLETED", "COMPENSATED", "CANCELLED"];

fn settled(source: TerminalSource, action: Action, reply: &Reply) -> Settle {
    let Some(v) = reply.json() else {
        return Settle::Pending;
    };
    settled_value(source, action, &v)
}

fn settled_value(source: TerminalSource, action: Action, v: &Value) -> Settle {
    let text = |key: &str| v.get(key).and_then(Value::as_str);
    let want = action.expected_saga_state();
    match source {
        TerminalSource::BookingList => settled_row(
            action,
            text("sagaState"),
            text("bookingStatus"),
            text("confirmStatus"),
        ),
        TerminalSource::Saga | TerminalSource::Auto | TerminalSource::Feed => {
            let settled = v.get("settled").and_then(Value::as_bool).unwrap_or(true);
            match text("state") {
                Some(s) if s == want && settled => Settle::Done,
                Some(s) if s != want && SETTLED_STATES.contains(&s) => Settle::Wrong(s.to_string()),
                _ => Settle::Pending,
            }
        }
    }
}

/// [`settled_row`] of a row from the live feed.
fn settled_feed_row(action: Action, row: &FeedRow) -> Settle {
    settled_row(
        action,
        row.saga_state.as_deref(),
        row.booking_status.as_deref(),
        row.confirm_status.as_deref(),
    )
}

/// Whether a booking-list row shows `action`'s path settled: its saga in the path's state
/// and the booking's and confirm's columns agreeing with it.
fn settled_row(
    action: Action,
    saga_state: Option<&str>,
    booking_status: Option<&str>,
    confirm_status: Option<&str>,
) -> Settle {
    match saga_state {
        Some(s) if s == action.expected_saga_state() => {
            let booking_ok = booking_status == Some(action.expected_booking_status());
            let confirm_ok = action
                .expected_confirm_status()
                .is_none_or(|c| confirm_status == Some(c));
            if booking_ok && confirm_ok {
                Settle::Done
            } else {
                Settle::Pending
            }
        }
        Some(s) if SETTLED_STATES.contains(&s) => Settle::Wrong(s.to_string()),
        _ => Settle::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_booking_list_shows_settled_only_when_every_column_agrees() {
        let bl = TerminalSource::BookingList;
        let row = json!({"sagaState": "COMPLETED", "bookingStatus": "CONFIRMED", "confirmStatus": "CONFIRMED"});
        assert_eq!(settled_value(bl, Action::Approve, &row), Settle::Done);
        let lagging = json!({"sagaState": "COMPLETED", "bookingStatus": "BOOKED", "confirmStatus": "CONFIRMED"});
        assert_eq!(
            settled_value(bl, Action::Approve, &lagging),
            Settle::Pending
        );
        let early = json!({"sagaState": "AWAITING_APPROVAL", "bookingStatus": "BOOKED"});
        assert_eq!(settled_value(bl, Action::Deny, &early), Settle::Pending);
        let denied = json!({"sagaState": "COMPENSATED", "bookingStatus": "CANCELLED", "confirmStatus": "DENIED"});
        assert_eq!(settled_value(bl, Action::Deny, &denied), Settle::Done);
        let cancelled = json!({"sagaState": "CANCELLED", "bookingStatus": "CANCELLED", "confirmStatus": "BOOKED"});
        assert_eq!(settled_value(bl, Action::Cancel, &cancelled), Settle::Done);
        assert_eq!(
            settled_value(bl, Action::Approve, &cancelled),
            Settle::Wrong("CANCELLED".into())
        );
    }

    #[test]
    fn a_feed_row_settles_as_the_same_row_read_from_the_booking_list() {
        let rows = [
            json!({"bookingId": "b", "sagaState": "COMPLETED", "bookingStatus": "CONFIRMED", "confirmStatus": "CONFIRMED"}),
            json!({"bookingId": "b", "sagaState": "COMPLETED", "bookingStatus": "BOOKED", "confirmStatus": "CONFIRMED"}),
            json!({"bookingId": "b", "sagaState": "AWAITING_APPROVAL", "bookingStatus": "BOOKED", "confirmId": "c"}),
            json!({"bookingId": "b", "sagaState": "COMPENSATED", "bookingStatus": "CANCELLED", "confirmStatus": "DENIED"}),
            json!({"bookingId": "b", "sagaState": "CANCELLED", "bookingStatus": "CANCELLED", "confirmStatus": "BOOKED"}),
            json!({"bookingId": "b"}),
        ];
        for row in rows {
            let typed: FeedRow = serde_json::from_value(row.clone()).unwrap();
            for action in [Action::Approve, Action::Deny, Action::Cancel] {
                assert_eq!(
                    settled_feed_row(action, &typed),
                    settled_value(TerminalSource::BookingList, action, &row),
                    "{action:?} {row}"
                );
            }
        }
    }

    #[test]
    fn the_saga_view_is_settled_in_the_paths_state() {
        let s = TerminalSource::Saga;
        let done = json!({"state": "COMPENSATED", "settled": true});
        assert_eq!(settled_value(s, Action::Deny, &done), Settle::Done);
        assert_eq!(
            settled_value(s, Action::Approve, &done),
            Settle::Wrong("COMPENSATED".into())
        );
        let going = json!({"state": "CONFIRMING", "settled": false});
        assert_eq!(settled_value(s, Action::Approve, &going), Settle::Pending);
        assert_eq!(
            settled_value(s, Action::Approve, &json!({})),
            Settle::Pending
        );
    }

    #[test]
    fn polls_back_off_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(4), Duration::from_millis(20));
        let delays: Vec<u128> = (0..7).map(|_| b.delay().as_millis()).collect();
        assert_eq!(delays, vec![4, 6, 9, 13, 20, 20, 20]);
    }

    #[test]
    fn the_confirm_id_is_read_from_a_list_or_a_page() {
        let reply = |body: Value| Reply {
            status: StatusCode::OK,
            body: serde_json::to_vec(&body).unwrap().into(),
        };
        assert_eq!(
            first_confirm_id(&reply(json!([{"id": "c1", "bookingId": "b"}]))).as_deref(),
            Some("c1")
        );
        assert_eq!(
            first_confirm_id(&reply(json!({"items": [{"id": "c2"}]}))).as_deref(),
            Some("c2")
        );
        assert_eq!(first_confirm_id(&reply(json!([]))), None);
    }
}
