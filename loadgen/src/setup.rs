//! Before a run: rooms to book (fresh ones per run, or the existing ones) and where to look for a
//! saga's settled state.

use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{api::Api, slots::RoomId};

/// Where a worker checks that a saga has settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminalSource {
    /// The booking list's live feed if the booking list is deployed, else the orchestrator's
    /// saga view.
    Auto,
    /// `GET /bookingLists/stream` (one live-feed connection for the run, no polling): shows the
    /// approval request and the settled state of every booking.
    Feed,
    /// `GET /bookingLists/{bookingId}` (the read model; settled when it shows the end state).
    BookingList,
    /// `GET /sagas/{bookingId}` as admin (the orchestrator's own state).
    Saga,
}

/// Waits until the gateway answers `GET /rooms` (the stack may still be starting).
pub async fn wait_ready(api: &Api, token: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match api.send(Method::GET, "/rooms", token, None).await {
            Ok(r) if r.status == StatusCode::OK => return Ok(()),
            Ok(r) => format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(f) => f.kind("GET /rooms"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the gateway is not ready after {}s: {last}",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Rooms for a run: `count` new rooms created as admin (so the run's bookings meet no one
/// else's), or the rooms that exist when `count` is 0.
pub async fn rooms(api: &Api, admin: &str, count: usize, run: &str) -> anyhow::Result<Vec<RoomId>> {
    if count == 0 {
        let reply = api
            .expect(Method::GET, "/rooms", admin, None, StatusCode::OK)
            .await
            .map_err(|f| anyhow::anyhow!(f.kind("GET /rooms")))?;
        let rooms = room_ids(&reply.json().unwrap_or(Value::Null));
        anyhow::ensure!(!rooms.is_empty(), "GET /rooms lists no rooms");
        return Ok(rooms);
    }
    let mut rooms = Vec::with_capacity(count);
    for k in 0..count {
        let body = json!({"name": format!("loadgen {run} #{k}"), "capacity": 8});
        let reply = api
            .expect(
                Method::POST,
                "/rooms",
                admin,
                Some(&body),
                StatusCode::CREATED,
            )
            .await
            .map_err(|f| anyhow::anyhow!(f.kind("POST /rooms")))?;
        let id = reply
            .json()
            .as_ref()
            .and_then(|v| v.get("id"))
            .and_then(room_id)
            .context("POST /rooms answered without an id")?;
        rooms.push(id);
    }
    Ok(rooms)
}

fn room_id(v: &Value) -> Option<RoomId> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// Room ids of a `GET /rooms` answer: a JSON array, or an object with `items`.
fn room_ids(v: &Value) -> Vec<RoomId> {
    let list = v
        .as_array()
        .or_else(|| v.get("items").and_then(Value::as_array));
    list.into_iter()
        .flatten()
        .filter_map(|r| r.get("id").or_else(|| r.get("roomId")).and_then(room_id))
        .collect()
}

/// Resolves `Auto`: the booking list's feed when the gateway routes to the booking list (any answer but a 502/503
/// or an empty-bodied 404, i.e. a route that does not exist), the saga view otherwise.
pub async fn resolve_terminal(
    api: &Api,
    admin: &str,
    wanted: TerminalSource,
) -> anyhow::Result<(TerminalSource, String)> {
    if wanted != TerminalSource::Auto {
        return Ok((wanted, "as asked".into()));
    }
    let probe = "/bookingLists/00000000-0000-0000-0000-000000000000";
    match api.send(Method::GET, probe, admin, None).await {
        Ok(r) if r.status.is_server_error() => Ok((
            TerminalSource::Saga,
            format!(
                "the booking list answers {} (not deployed?)",
                r.status.as_u16()
            ),
        )),
        Ok(r) if r.status == StatusCode::NOT_FOUND && r.body.is_empty() => Ok((
            TerminalSource::Saga,
            "the booking list has no GET /bookingLists/{id} route".into(),
        )),
        Ok(_) => Ok((TerminalSource::Feed, "the booking list is deployed".into())),
        Err(f) => Err(anyhow::anyhow!(f.kind("probing the booking list"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_come_from_a_list_or_a_page() {
        let list = json!([{"id": 101, "name": "a"}, {"id": "102"}, {"roomId": 7}, {"name": "x"}]);
        assert_eq!(room_ids(&list), vec![101, 102, 7]);
        let page = json!({"items": [{"id": 5}]});
        assert_eq!(room_ids(&page), vec![5]);
        assert!(room_ids(&json!({"error": 1})).is_empty());
    }
}
