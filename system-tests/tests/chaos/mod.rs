//! Process-level fault injection: the real service binaries and a real nats-server, a driver
//! running hundreds of sagas (approve / deny / owner's cancel / expiry; a fifth of the requests
//! compete for a slot another saga booked) while a chaos task SIGKILLs and restarts the
//! orchestrator, booking and confirm at random points of the driver's requests and restarts
//! nats-server once; then a checker asks every service and asserts DESIGN §2's invariants,
//! among them no double booking.
//!
//! The binaries come from the same target directory as this test (`cargo build --bins`, which
//! `scripts/test` runs first). `ROOMBOOK_CHAOS_SEED` replays a run; `ROOMBOOK_CHAOS_SAGAS` sizes it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Duration as Span, Utc};
use futures::StreamExt as _;
use platform::{
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    testkit::{eventually, NatsServer},
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};

/// One service binary run as a child process; SIGKILLed and restarted by the chaos task.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub url: String,
}

impl Proc {
    pub fn new(name: &str, bin: &str, dir: &Path, env: Vec<(String, String)>) -> Proc {
        let port = free_port();
        let mut env = env;
        env.push(("HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("RUST_LOG".into(), "warn".into()));
        Proc {
            name: name.into(),
            bin: binary(bin),
            env,
            log: dir.join(format!("{name}.log")),
            child: None,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.bin)
            .envs(self.env.iter().cloned())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flushing, whatever was in flight is cut off.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A binary built next to this test executable (target/<profile>/).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; scripts/test does)",
        bin.display()
    );
    bin
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Approve,
    Deny,
    Cancel,
    /// No decision: the deadline passes.
    Expire,
}

/// What the driver saw for one saga.
#[derive(Debug, Clone)]
struct Outcome {
    action: Action,
    /// The status the decision finally got (200, or 409 when it lost to the deadline).
    answered: Option<StatusCode>,
}

pub struct Settings {
    pub sagas: usize,
    pub orchestrators: usize,
    /// Replicas of booking and of confirm (sharing their durable consumers and databases).
    pub participants: usize,
    /// Database URL per service name (a fresh one per orchestrator is not wanted: replicas share).
    pub database_url: Box<dyn Fn(&str) -> String>,
}

struct Cluster {
    nats: NatsServer,
    bookings: Vec<Proc>,
    confirms: Vec<Proc>,
    orchestrators: Vec<Proc>,
    /// The read model: killed like the rest, it must catch up and agree.
    bookinglist: Proc,
}

impl Cluster {
    fn all(&mut self) -> Vec<&mut Proc> {
        self.bookings
            .iter_mut()
            .chain(self.confirms.iter_mut())
            .chain(self.orchestrators.iter_mut())
            .chain(std::iter::once(&mut self.bookinglist))
            .collect()
    }
}

const APPROVAL_TIMEOUT_SECS: i64 = 12;
/// One saga starts every this often: 300 sagas take about 30 s.
const ARRIVAL_INTERVAL: Duration = Duration::from_millis(100);

pub async fn run(settings: Settings) {
    platform::telemetry::init_for_tests();
    let seed: u64 = std::env::var("ROOMBOOK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let sagas: usize = std::env::var("ROOMBOOK_CHAOS_SAGAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(settings.sagas);
    println!(
        "chaos: seed {seed} (replay with ROOMBOOK_CHAOS_SEED={seed}), {sagas} sagas, {} orchestrator(s), {} of booking and confirm each",
        settings.orchestrators, settings.participants
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start();
    let common = |service: &str| {
        vec![
            ("NATS_URL".to_string(), nats.url()),
            ("DATABASE_URL".to_string(), (settings.database_url)(service)),
            (
                "APPROVAL_TIMEOUT_SECS".to_string(),
                APPROVAL_TIMEOUT_SECS.to_string(),
            ),
            ("TIMER_INTERVAL_MS".to_string(), "200".to_string()),
            ("COMMAND_RETRY_SECS".to_string(), "2".to_string()),
            ("COMMAND_MAX_ATTEMPTS".to_string(), "60".to_string()),
        ]
    };
    let replicas = |service: &str, n: usize| -> Vec<Proc> {
        (0..n)
            .map(|i| {
                Proc::new(
                    &format!("{service}-{i}"),
                    &format!("roombook-{service}"),
                    dir.path(),
                    common(service),
                )
            })
            .collect()
    };
    let mut cluster = Cluster {
        bookings: replicas("booking", settings.participants),
        confirms: replicas("confirm", settings.participants),
        orchestrators: replicas("orchestrator", settings.orchestrators),
        bookinglist: replicas("bookinglist", 1).remove(0),
        nats,
    };
    for p in cluster.all() {
        p.start();
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for p in cluster.all() {
        let url = format!("{}/readyz", p.url);
        let (http, url) = (&http, &url);
        eventually(
            &format!("{} to be ready", p.name),
            Duration::from_secs(60),
            || async move {
                let r = http.get(url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }
    let urls = Urls {
        bookings: cluster.bookings.iter().map(|p| p.url.clone()).collect(),
        confirms: cluster.confirms.iter().map(|p| p.url.clone()).collect(),
        orchestrator: cluster.orchestrators[0].url.clone(),
        bookinglist: cluster.bookinglist.url.clone(),
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let plan: Vec<Action> = (0..sagas)
        .map(|_| match rng.gen_range(0..100) {
            0..=54 => Action::Approve,
            55..=69 => Action::Deny,
            70..=84 => Action::Cancel,
            _ => Action::Expire,
        })
        .collect();

    let cluster = Arc::new(Mutex::new(cluster));
    let done = tokio_util::sync::CancellationToken::new();
    let (requests, requests_seen) = watch::channel(0);
    let chaos = tokio::spawn(chaos(cluster.clone(), seed, requests_seen, done.clone()));

    let base = (Utc::now() + Span::days(30))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let driver = Driver {
        http: http.clone(),
        urls: urls.clone(),
        contested: (0..sagas)
            .filter(|&i| competes(i))
            .flat_map(|i| [Some(i), rival(i)])
            .flatten()
            .collect(),
        requests,
    };
    // Sagas arrive on a fixed schedule (open-loop load), so the faults fall across the whole run.
    let began = tokio::time::Instant::now();
    let outcomes: Vec<Option<(String, Outcome)>> =
        futures::stream::iter(plan.iter().copied().enumerate())
            .map(|(i, action)| {
                let driver = &driver;
                async move {
                    tokio::time::sleep_until(began + ARRIVAL_INTERVAL * i as u32).await;
                    let (room, start) = slot(base, i);
                    driver.saga(i, room, start, action).await
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    done.cancel();
    let (kills, nats_restarted) = chaos.await.expect("chaos task");
    println!(
        "chaos: {kills} kills/restarts during the run, nats-server restarted: {nats_restarted}"
    );
    assert!(
        kills >= 5 && nats_restarted,
        "the run was too short for the faults it is meant to show"
    );

    // Everything runs again; every saga must settle on its own.
    {
        let mut c = cluster.lock().await;
        for p in c.all() {
            if p.child.is_none() {
                p.start();
            }
        }
    }
    let competing = (0..sagas).filter(|&i| competes(i)).count();
    let refused = outcomes.iter().filter(|o| o.is_none()).count();
    println!(
        "chaos: {competing} requests competed for another's slot; {refused} requests were refused as overlapping"
    );
    assert!(
        competing < 10 || refused > 0,
        "no request was refused: the slots did not collide"
    );
    let expected: HashMap<String, Outcome> = outcomes.into_iter().flatten().collect();
    let settled = eventually("every saga to settle", Duration::from_secs(180), || async {
        let sagas = driver
            .get(&format!("{}/sagas?limit=1000", urls.orchestrator))
            .await?;
        let sagas = sagas.as_array()?.clone();
        let all = sagas.len() == expected.len() && sagas.iter().all(|s| s["settled"] == true);
        all.then_some(sagas)
    })
    .await;
    let mut result = check(&driver, &urls, &expected, &settled).await;
    if result.is_ok() {
        // The read model catches up on its own; once it has, it must agree with the services.
        let agreement = eventually(
            "the booking list to agree",
            Duration::from_secs(120),
            || async {
                let problems = booking_list_disagreements(&driver, &urls, &settled).await?;
                problems.is_empty().then_some(())
            },
        )
        .await;
        result = Ok(agreement);
    }
    if let Err(problems) = result {
        let c = cluster.lock().await;
        for p in c
            .bookings
            .iter()
            .chain(c.confirms.iter())
            .chain(c.orchestrators.iter())
            .chain(std::iter::once(&c.bookinglist))
        {
            eprintln!("--- {} log tail ---\n{}", p.name, p.log_tail());
        }
        panic!(
            "chaos seed {seed}: {} invariant violations:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    println!(
        "chaos: all {} sagas settled and every invariant holds",
        expected.len()
    );
}

/// The saga whose slot saga `i` competes for, if it does (every fifth does): the one just
/// before it, still in flight, or (every other one, once there are enough) one from about 15 s
/// earlier, whose slot has often been freed by a denial, a cancel or an expiry by then. Rivals
/// never compete themselves.
fn rival(i: usize) -> Option<usize> {
    match i % 10 {
        9 if i >= 151 => Some(i - 151),
        4 | 9 => Some(i - 1),
        _ => None,
    }
}

fn competes(i: usize) -> bool {
    rival(i).is_some()
}

/// Where saga `i` books: a room and day of its own, or half an hour into its rival's hour.
fn slot(base: DateTime<Utc>, i: usize) -> (i64, DateTime<Utc>) {
    let own = |k: usize| {
        let room = [101, 102, 103, 201][k % 4];
        (room, base + Span::days((k / 4) as i64) + Span::hours(9))
    };
    match rival(i) {
        None => own(i),
        Some(r) => {
            let (room, start) = own(r);
            (room, start + Span::minutes(30))
        }
    }
}

#[derive(Clone)]
struct Urls {
    bookings: Vec<String>,
    confirms: Vec<String>,
    orchestrator: String,
    bookinglist: String,
}

impl Urls {
    /// Spreads the sagas over the replicas.
    fn booking(&self, i: usize) -> &str {
        &self.bookings[i % self.bookings.len()]
    }

    fn confirm(&self, i: usize) -> &str {
        &self.confirms[i % self.confirms.len()]
    }
}

struct Driver {
    http: reqwest::Client,
    urls: Urls,
    /// Sagas whose slot another one asks for: whichever comes second may be refused.
    contested: HashSet<usize>,
    /// Requests sent so far (answered or not): the clock the fault schedule runs on.
    requests: watch::Sender<u64>,
}

impl Driver {
    fn count_request(&self) {
        self.requests.send_modify(|n| *n += 1);
    }

    /// One request, retried while the service is down or answering 5xx (it is being killed).
    async fn call(
        &self,
        method: Method,
        url: &str,
        user: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let role = if user == "admin" {
            "user,admin"
        } else {
            "user"
        };
        eventually(
            &format!("{method} {url} to be answered"),
            Duration::from_secs(120),
            || async {
                self.count_request();
                let mut req = self
                    .http
                    .request(method.clone(), url)
                    .header(USER_ID_HEADER, user)
                    .header(USER_ROLES_HEADER, role);
                if let Some(b) = &body {
                    req = req.json(b);
                }
                if let Some(k) = key {
                    req = req.header("Idempotency-Key", k);
                }
                // No answer or a 5xx: the service is being killed or restarted; ask again.
                let resp = req
                    .send()
                    .await
                    .ok()
                    .filter(|r| !r.status().is_server_error())?;
                let status = resp.status();
                Some((status, resp.json().await.unwrap_or(Value::Null)))
            },
        )
        .await
    }

    async fn get(&self, url: &str) -> Option<Value> {
        self.count_request();
        let resp = self
            .http
            .get(url)
            .header(USER_ID_HEADER, "admin")
            .header(USER_ROLES_HEADER, "user,admin")
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())?;
        resp.json().await.ok()
    }

    async fn saga(
        &self,
        i: usize,
        room: i64,
        start: DateTime<Utc>,
        action: Action,
    ) -> Option<(String, Outcome)> {
        let user = format!("user{}", i % 25);
        let body = json!({"roomId": room, "useStartDtm": start.to_rfc3339(), "useEndDtm": (start + Span::hours(1)).to_rfc3339()});
        let key = format!("chaos-{i}");
        let (status, booking) = self
            .call(
                Method::POST,
                &format!("{}/bookings", self.urls.booking(i)),
                &user,
                Some(body),
                Some(&key),
            )
            .await;
        if status == StatusCode::CONFLICT && self.contested.contains(&i) {
            // The other one holds the slot: no booking, no saga.
            assert_eq!(booking["type"], "/problems/booking-overlap", "saga {i}");
            return None;
        }
        assert_eq!(status, StatusCode::CREATED, "saga {i}: {booking}");
        let id = booking["id"].as_str().unwrap().to_string();
        let mut outcome = Outcome {
            action,
            answered: None,
        };
        if action == Action::Expire {
            return Some((id, outcome));
        }
        let confirm_url = format!(
            "{}/confirms?bookingId={id}&includeClosed=true",
            self.urls.confirm(i + 1)
        );
        let confirm = eventually(
            &format!("saga {i}: the confirm"),
            Duration::from_secs(120),
            || async {
                let list = self.get(&confirm_url).await?;
                list.as_array()?.first().cloned()
            },
        )
        .await;
        let confirm_id = confirm["id"].as_str().unwrap();
        let (status, body) = match action {
            Action::Approve | Action::Deny => {
                let decision = if action == Action::Approve {
                    "CONFIRMED"
                } else {
                    "DENIED"
                };
                self.call(
                    Method::PATCH,
                    &format!("{}/confirms/{confirm_id}", self.urls.confirm(i)),
                    "admin",
                    Some(json!({"status": decision})),
                    None,
                )
                .await
            }
            Action::Cancel => {
                self.call(
                    Method::DELETE,
                    &format!("{}/bookings/{id}", self.urls.booking(i + 1)),
                    &user,
                    None,
                    None,
                )
                .await
            }
            Action::Expire => unreachable!(),
        };
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "saga {i} {action:?}: {status} {body}"
        );
        outcome.answered = Some(status);
        Some((id, outcome))
    }
}

/// Until `requests` (the driver's request count) has grown by `more`; false if `done` fired
/// first.
async fn after_requests(
    requests: &mut watch::Receiver<u64>,
    more: u64,
    done: &tokio_util::sync::CancellationToken,
) -> bool {
    let target = *requests.borrow() + more;
    tokio::select! {
        () = done.cancelled() => false,
        seen = requests.wait_for(|n| *n >= target) => seen.is_ok(),
    }
}

/// The chaos task: until `done`, SIGKILL a random service and restart it a little later;
/// restart nats-server once. Its schedule runs on the driver's requests, not on time: the next
/// kill comes after a few more requests, and its victim stays down while the driver sends a
/// few more (which retry against it or wait on what it does). Returns how many kills it made
/// and whether the broker was restarted.
async fn chaos(
    cluster: Arc<Mutex<Cluster>>,
    seed: u64,
    mut requests: watch::Receiver<u64>,
    done: tokio_util::sync::CancellationToken,
) -> (usize, bool) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut kills = 0;
    let mut nats_restarted = false;
    while !done.is_cancelled() {
        if !after_requests(&mut requests, rng.gen_range(20..80), &done).await {
            break;
        }
        let mut c = cluster.lock().await;
        if !nats_restarted && kills >= 3 {
            c.nats.restart();
            nats_restarted = true;
            continue;
        }
        let victims = c.all().len();
        let victim = rng.gen_range(0..victims);
        let down_for = rng.gen_range(10..40);
        c.all()[victim].kill();
        kills += 1;
        drop(c);
        // Restarted also when the run ends first.
        after_requests(&mut requests, down_for, &done).await;
        cluster.lock().await.all()[victim].start();
    }
    (kills, nats_restarted)
}

/// Asks every service and checks DESIGN §2's invariants; returns the violations.
async fn check(
    driver: &Driver,
    urls: &Urls,
    expected: &HashMap<String, Outcome>,
    sagas: &[Value],
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let bookings = driver
        .get(&format!("{}/bookings?limit=1000", urls.booking(0)))
        .await
        .expect("bookings");
    let confirms = driver
        .get(&format!(
            "{}/confirms?includeClosed=true&limit=1000",
            urls.confirm(0)
        ))
        .await
        .expect("confirms");
    let bookings: BTreeMap<String, Value> = bookings
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b.clone()))
        .collect();
    let confirms: BTreeMap<String, Value> = confirms
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["bookingId"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    let sagas: BTreeMap<String, Value> = sagas
        .iter()
        .map(|s| (s["bookingId"].as_str().unwrap().to_string(), s.clone()))
        .collect();

    // Effects once: retried POSTs (same Idempotency-Key) created one booking each.
    if bookings.len() != expected.len() {
        problems.push(format!(
            "{} bookings for {} sagas started",
            bookings.len(),
            expected.len()
        ));
    }
    for (id, outcome) in expected {
        let (Some(b), Some(s)) = (bookings.get(id), sagas.get(id)) else {
            problems.push(format!("{id}: booking or saga missing"));
            continue;
        };
        let state = s["state"].as_str().unwrap_or("?");
        let status = b["status"].as_str().unwrap_or("?");
        let confirm = confirms.get(id);
        let confirm_status = confirm.map_or("-", |c| c["status"].as_str().unwrap_or("?"));
        let confirm_closed = confirm.is_none_or(|c| c["closed"] == true);
        // Every saga settles, none stuck.
        if s["settled"] != true || s["stuck"] == true {
            problems.push(format!(
                "{id}: saga {state} not settled (stuck: {})",
                s["stuck"]
            ));
        }
        // Agreement between booking, confirm and saga.
        let agree = match status {
            "CONFIRMED" => state == "COMPLETED" && confirm_status == "CONFIRMED" && !confirm_closed,
            "CANCELLED" => (state == "COMPENSATED" || state == "CANCELLED") && confirm_closed,
            _ => false,
        };
        if !agree {
            problems.push(format!("{id}: booking {status}, confirm {confirm_status} (closed {confirm_closed}), saga {state}"));
        }
        // Each decision that was accepted is what happened.
        let expected_state = match (outcome.action, outcome.answered) {
            (Action::Approve, Some(StatusCode::OK)) => Some("COMPLETED"),
            (Action::Deny, Some(StatusCode::OK)) => Some("COMPENSATED"),
            (Action::Cancel, Some(StatusCode::OK)) => Some("CANCELLED"),
            (Action::Approve | Action::Deny, Some(_)) | (Action::Expire, _) => Some("COMPENSATED"),
            _ => None,
        };
        if let Some(want) = expected_state {
            if state != want {
                problems.push(format!(
                    "{id}: {:?} answered {:?} but the saga ended {state}",
                    outcome.action, outcome.answered
                ));
            }
        }
        if outcome.action == Action::Expire && b["cancelReason"] != "EXPIRED" {
            problems.push(format!(
                "{id}: never decided, but cancelled as {}",
                b["cancelReason"]
            ));
        }
    }
    // No double booking among live bookings.
    let mut live: Vec<(i64, i64, i64, &str)> = bookings
        .values()
        .filter(|b| b["status"] != "CANCELLED")
        .map(|b| {
            let t = |k: &str| {
                DateTime::parse_from_rfc3339(b[k].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis()
            };
            (
                b["roomId"].as_i64().unwrap(),
                t("useStartDtm"),
                t("useEndDtm"),
                b["id"].as_str().unwrap(),
            )
        })
        .collect();
    live.sort();
    for pair in live.windows(2) {
        if pair[0].0 == pair[1].0 && pair[1].1 < pair[0].2 {
            problems.push(format!("double booking: {} and {}", pair[0].3, pair[1].3));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Rows of the booking list that disagree with the sagas (and, through `check`, with booking and
/// confirm); None while the list cannot be read.
async fn booking_list_disagreements(
    driver: &Driver,
    urls: &Urls,
    sagas: &[Value],
) -> Option<Vec<String>> {
    let mut rows = BTreeMap::new();
    for page in 1.. {
        let list = driver
            .get(&format!(
                "{}/bookingLists?size=200&page={page}",
                urls.bookinglist
            ))
            .await?;
        let items = list["items"].as_array()?;
        for row in items {
            rows.insert(row["bookingId"].as_str()?.to_string(), row.clone());
        }
        if items.len() < 200 {
            break;
        }
    }
    let mut problems = Vec::new();
    for saga in sagas {
        let id = saga["bookingId"].as_str()?;
        let Some(row) = rows.get(id) else {
            problems.push(format!("{id}: no booking-list row"));
            continue;
        };
        let state = saga["state"].as_str()?;
        let want_status = if state == "COMPLETED" {
            "CONFIRMED"
        } else {
            "CANCELLED"
        };
        if row["sagaState"] != state || row["bookingStatus"] != want_status {
            problems.push(format!(
                "{id}: list shows {} / {}, saga {state}",
                row["bookingStatus"], row["sagaState"]
            ));
        }
    }
    if rows.len() != sagas.len() {
        problems.push(format!("{} rows for {} sagas", rows.len(), sagas.len()));
    }
    Some(problems)
}
