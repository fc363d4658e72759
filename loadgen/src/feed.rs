//! Watching sagas through the booking list's live feed (`GET /bookingLists/stream`, Server-Sent
//! Events) instead of polling: one connection for the whole run, as admin, keeps each booking's
//! latest row; a worker waits on its booking's row until it shows what the worker needs (the
//! approval request, then the settled state). A dropped connection is resumed with
//! `Last-Event-ID`, so no change is missed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde::Deserialize;
use tokio::{sync::watch, time::Instant};

use crate::stats::{CallEnd, Recorder};

/// Counter of the rows the feed sent.
pub const FEED_EVENTS: &str = "feed.events";

/// The saga states whose rows the feed sends: the approval request is open, or settled.
const WATCHED_SAGA_STATES: [&str; 4] =
    ["AWAITING_APPROVAL", "COMPLETED", "COMPENSATED", "CANCELLED"];

/// What a worker reads of a booking-list row: parsed into these fields alone (the feed sends
/// every column; the load generator shares the machine with the stack it measures).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedRow {
    pub booking_id: String,
    pub confirm_id: Option<String>,
    pub saga_state: Option<String>,
    pub booking_status: Option<String>,
    pub confirm_status: Option<String>,
}

/// Rows by booking id, as the feed last showed them.
#[derive(Default)]
pub struct Watch {
    rows: Mutex<HashMap<String, watch::Sender<Option<FeedRow>>>>,
}

impl Watch {
    /// Connects to the feed and keeps it connected until the returned task is aborted. Returns
    /// once the feed has said it is ready, so every booking made afterwards will be seen.
    pub async fn start(
        gateway: &str,
        token: &str,
        stats: Arc<Recorder>,
        within: Duration,
    ) -> anyhow::Result<(Arc<Watch>, tokio::task::JoinHandle<()>)> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        // Only rows a worker waits for: the approval request (its saga awaits approval) and the
        // settled states. Every other change of a row is left on the server.
        let url = format!(
            "{}/bookingLists/stream?sagaState={}",
            gateway.trim_end_matches('/'),
            WATCHED_SAGA_STATES.join(",")
        );
        let watch = Arc::new(Watch::default());
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let task = tokio::spawn(follow(
            http,
            url,
            token.to_string(),
            watch.clone(),
            stats,
            ready_tx,
        ));
        tokio::time::timeout(within, ready_rx.wait_for(|ready| *ready))
            .await
            .context("the booking list's live feed did not open in time")?
            .context("the live feed task ended")?;
        Ok((watch, task))
    }

    /// Waits until the row of `booking` satisfies `done` (returning it), or `deadline` passes.
    pub async fn wait_for(
        &self,
        booking: &str,
        deadline: Instant,
        done: impl Fn(&FeedRow) -> bool,
    ) -> Option<FeedRow> {
        let mut rx = self.sender(booking).subscribe();
        let found =
            tokio::time::timeout_at(deadline, rx.wait_for(|row| row.as_ref().is_some_and(&done)))
                .await;
        match found {
            Ok(Ok(row)) => row.clone(),
            _ => None,
        }
    }

    /// Drops what is kept about `booking` (its saga is over for this run).
    pub fn forget(&self, booking: &str) {
        self.rows.lock().expect("rows lock").remove(booking);
    }

    fn sender(&self, booking: &str) -> watch::Sender<Option<FeedRow>> {
        self.rows
            .lock()
            .expect("rows lock")
            .entry(booking.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    fn update(&self, row: FeedRow) {
        let sender = self.sender(&row.booking_id);
        sender.send_replace(Some(row));
    }
}

/// Keeps one feed connection open, resuming after the last event id whenever it drops.
async fn follow(
    http: reqwest::Client,
    url: String,
    token: String,
    watch: Arc<Watch>,
    stats: Arc<Recorder>,
    ready: watch::Sender<bool>,
) {
    let mut last_id: Option<String> = None;
    loop {
        let mut req = http
            .get(&url)
            .bearer_auth(&token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        match req.send().await {
            Ok(mut resp) if resp.status().is_success() => {
                stats.http(CallEnd::Answered);
                let mut parser = SseParser::default();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    for event in parser.push(&chunk) {
                        if let Some(id) = event.id {
                            last_id = Some(id);
                        }
                        match event.name.as_str() {
                            "ready" => {
                                ready.send_replace(true);
                            }
                            "bookingList" => {
                                stats.count(FEED_EVENTS, 1);
                                if let Ok(row) = serde_json::from_str(&event.data) {
                                    watch.update(row);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                eprintln!("loadgen: the live feed closed; reconnecting");
            }
            Ok(resp) => {
                stats.http(if resp.status().is_server_error() {
                    CallEnd::ServerError
                } else {
                    CallEnd::Answered
                });
                eprintln!("loadgen: the live feed answered {}", resp.status());
            }
            Err(e) => {
                stats.http(CallEnd::TransportError);
                eprintln!("loadgen: cannot open the live feed: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    name: String,
    data: String,
    id: Option<String>,
}

/// Splits a byte stream into Server-Sent Events (fields `event`, `data`, `id`; comments and
/// other fields ignored; events end at a blank line).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: SseEvent,
    has_data: bool,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data {
                    let mut event = std::mem::take(&mut self.event);
                    if event.name.is_empty() {
                        event.name = "message".into();
                    }
                    events.push(event);
                } else {
                    self.event = SseEvent::default();
                }
                self.has_data = false;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event.name = value.to_string(),
                "id" => self.event.id = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_blank_lines_across_chunks() {
        let mut p = SseParser::default();
        assert!(p
            .push(b"retry: 3000\nevent: ready\nid: 7\ndata: {\"position\"")
            .is_empty());
        let events = p.push(
            b": 7}\n\n:keep-alive\n\nevent: bookingList\r\nid: 8\r\ndata: a\r\ndata: b\r\n\r\n",
        );
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: "ready".into(),
                    data: "{\"position\": 7}".into(),
                    id: Some("7".into()),
                },
                SseEvent {
                    name: "bookingList".into(),
                    data: "a\nb".into(),
                    id: Some("8".into()),
                },
            ]
        );
    }

    fn row(json: &str) -> FeedRow {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_row_keeps_the_columns_a_worker_reads_and_skips_the_rest() {
        let parsed = row(
            r#"{"bookingId": "b1", "roomId": 101, "sagaState": "COMPLETED",
            "bookingStatus": "CONFIRMED", "confirmStatus": "CONFIRMED", "confirmId": "c1",
            "confirmClosed": false, "timeline": [{"at": 1}], "useStartDtm": null}"#,
        );
        assert_eq!(
            parsed,
            FeedRow {
                booking_id: "b1".into(),
                confirm_id: Some("c1".into()),
                saga_state: Some("COMPLETED".into()),
                booking_status: Some("CONFIRMED".into()),
                confirm_status: Some("CONFIRMED".into()),
            }
        );
        let bare = row(r#"{"bookingId": "b2", "sagaState": null}"#);
        assert_eq!(bare.saga_state, None);
        assert!(serde_json::from_str::<FeedRow>(r#"{"sagaState": "COMPLETED"}"#).is_err());
    }

    #[tokio::test]
    async fn a_waiter_sees_a_row_that_arrived_before_it_asked() {
        let w = Watch::default();
        w.update(row(r#"{"bookingId": "b1", "sagaState": "STARTED"}"#));
        let deadline = Instant::now() + Duration::from_millis(50);
        let seen = w
            .wait_for("b1", deadline, |r| {
                r.saga_state.as_deref() == Some("STARTED")
            })
            .await;
        assert_eq!(seen.unwrap().saga_state.as_deref(), Some("STARTED"));
        assert!(w
            .wait_for("b1", deadline, |r| {
                r.saga_state.as_deref() == Some("COMPLETED")
            })
            .await
            .is_none());
        w.forget("b1");
        assert!(w.rows.lock().unwrap().is_empty());
    }
}
