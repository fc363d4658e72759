//! Every route the gateway serves, called by an anonymous caller, a user who owns the resource,
//! another user, and an admin, against the real services.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    helpers::{admin_token, token},
    stack::{future, Stack, WAIT},
};
use platform::testkit::eventually;

/// Every operation of the public API: what the OpenAPI document must list, and what the matrix
/// below must cover.
pub const API_ROUTES: &[(&str, &str)] = &[
    ("GET", "/bookings"),
    ("POST", "/bookings"),
    ("GET", "/bookings/{id}"),
    ("DELETE", "/bookings/{id}"),
    ("GET", "/rooms"),
    ("POST", "/rooms"),
    ("GET", "/rooms/{id}"),
    ("GET", "/rooms/{id}/availability"),
    ("GET", "/confirms"),
    ("POST", "/confirms"),
    ("GET", "/confirms/{id}"),
    ("PATCH", "/confirms/{id}"),
    ("GET", "/sagas"),
    ("GET", "/sagas/{id}"),
    ("POST", "/sagas/{id}/retry"),
    ("POST", "/sagas/{id}/compensate"),
    ("GET", "/notifications"),
    ("GET", "/notifications/{id}"),
    ("GET", "/bookingLists"),
    ("GET", "/bookingLists/{bookingId}"),
    ("GET", "/bookingLists/stream"),
    ("GET", "/bookingLists/lag"),
    ("GET", "/bookingLists/rebuild"),
    ("POST", "/bookingLists/rebuild"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs/"),
];

const CALLERS: [&str; 4] = ["anonymous", "user (owner)", "other user", "admin"];

/// One route and what each caller gets: anonymous, the owning user, another user, an admin.
struct Row {
    method: Method,
    template: &'static str,
    expected: [u16; 4],
}

fn row(method: &str, template: &'static str, expected: [u16; 4]) -> Row {
    Row {
        method: method.parse().unwrap(),
        template,
        expected,
    }
}

/// What a call of one row by one caller needs: its path and body.
struct Call {
    path: String,
    body: Option<Value>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_the_rules_say() {
    let stack = Stack::start(|_| {}).await;
    let alice = token("alice", &["user"]);
    let bob = token("bob", &["user"]);
    let admin = admin_token();
    let tokens = [
        None,
        Some(alice.as_str()),
        Some(bob.as_str()),
        Some(admin.as_str()),
    ];

    // Alice's booking, its approval request, its mail and its row in the booking list.
    let booking = stack.book(&alice, 101, future(3, 9)).await;
    let booking_id = booking["id"].as_str().unwrap().to_string();
    let confirm = stack.wait_confirm(&admin, &booking_id).await;
    let confirm_id = confirm["id"].as_str().unwrap().to_string();
    let notification_id = eventually("alice's booking mail", WAIT, || async {
        let (_, list) = stack
            .call(
                Method::GET,
                &format!("/notifications?bookingId={booking_id}"),
                Some(&alice),
                None,
            )
            .await;
        list.as_array()
            .and_then(|l| l.first())
            .and_then(|n| n["id"].as_str().map(str::to_string))
    })
    .await;
    eventually("alice's row in the booking list", WAIT, || async {
        let (status, _) = stack
            .call(
                Method::GET,
                &format!("/bookingLists/{booking_id}"),
                Some(&alice),
                None,
            )
            .await;
        (status == 200).then_some(())
    })
    .await;

    let rows = [
        row("GET", "/bookings", [401, 200, 200, 200]),
        row("POST", "/bookings", [401, 201, 201, 201]),
        row("GET", "/bookings/{id}", [401, 200, 404, 200]),
        row("DELETE", "/bookings/{id}", [401, 200, 404, 200]),
        row("GET", "/rooms", [401, 200, 200, 200]),
        row("POST", "/rooms", [401, 403, 403, 201]),
        row("GET", "/rooms/{id}", [401, 200, 200, 200]),
        row("GET", "/rooms/{id}/availability", [401, 200, 200, 200]),
        row("GET", "/confirms", [401, 403, 403, 200]),
        row("POST", "/confirms", [401, 403, 403, 200]),
        row("GET", "/confirms/{id}", [401, 403, 403, 200]),
        row("PATCH", "/confirms/{id}", [401, 403, 403, 200]),
        row("GET", "/sagas", [401, 403, 403, 200]),
        row("GET", "/sagas/{id}", [401, 403, 403, 200]),
        // The admin is let through; a saga awaiting a person waits on no command to resend.
        row("POST", "/sagas/{id}/retry", [401, 403, 403, 409]),
        row("POST", "/sagas/{id}/compensate", [401, 403, 403, 200]),
        row("GET", "/notifications", [401, 200, 200, 200]),
        row("GET", "/notifications/{id}", [401, 200, 404, 200]),
        row("GET", "/bookingLists", [401, 200, 200, 200]),
        row("GET", "/bookingLists/{bookingId}", [401, 200, 404, 200]),
        row("GET", "/bookingLists/stream", [401, 200, 200, 200]),
        row("GET", "/bookingLists/lag", [401, 200, 200, 200]),
        row("GET", "/bookingLists/rebuild", [401, 403, 403, 200]),
        // Last: it rebuilds the list the rows above read.
        row("POST", "/bookingLists/rebuild", [401, 403, 403, 202]),
        row("GET", "/healthz", [200; 4]),
        row("GET", "/readyz", [200; 4]),
        row("GET", "/metrics", [200; 4]),
        row("GET", "/openapi.json", [200; 4]),
        row("GET", "/docs/", [200; 4]),
    ];
    let mut covered: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.method.as_str(), r.template))
        .collect();
    let mut listed = API_ROUTES.to_vec();
    covered.sort();
    listed.sort();
    assert_eq!(covered, listed, "the matrix covers every route");

    let mut fresh_day = 10;
    let mut mismatches = Vec::new();
    for row in &rows {
        for (caller_index, (caller, token)) in CALLERS.iter().zip(tokens).enumerate() {
            // Calls that change things get a booking of their own each.
            let mut fresh = || {
                fresh_day += 1;
                future(fresh_day, 14)
            };
            let call = match (row.method.as_str(), row.template) {
                ("POST", "/bookings") => Call {
                    path: "/bookings".into(),
                    body: Some(slot_body(102, fresh())),
                },
                ("GET", "/bookings/{id}") => path(format!("/bookings/{booking_id}")),
                ("DELETE", "/bookings/{id}") => {
                    let own = stack.book(&alice, 102, fresh()).await;
                    path(format!("/bookings/{}", own["id"].as_str().unwrap()))
                }
                ("POST", "/rooms") => Call {
                    path: "/rooms".into(),
                    body: Some(json!({"name": format!("Room of {caller}")})),
                },
                ("GET", "/rooms/{id}") => path("/rooms/101".into()),
                ("GET", "/rooms/{id}/availability") => path("/rooms/101/availability".into()),
                ("POST", "/confirms") => Call {
                    path: "/confirms".into(),
                    body: Some(json!({"bookingId": booking_id, "status": "BOOKED"})),
                },
                ("GET", "/confirms/{id}") => path(format!("/confirms/{confirm_id}")),
                ("PATCH", "/confirms/{id}") => {
                    let own = stack.book(&alice, 102, fresh()).await;
                    let own_id = own["id"].as_str().unwrap();
                    let request = stack.wait_confirm(&admin, own_id).await;
                    Call {
                        path: format!("/confirms/{}", request["id"].as_str().unwrap()),
                        body: Some(json!({"status": "CONFIRMED"})),
                    }
                }
                ("GET", "/sagas/{id}") => path(format!("/sagas/{booking_id}")),
                ("POST", "/sagas/{id}/retry") => path(format!("/sagas/{booking_id}/retry")),
                ("POST", "/sagas/{id}/compensate") => {
                    let own = stack.book(&alice, 102, fresh()).await;
                    let own_id = own["id"].as_str().unwrap().to_string();
                    stack.wait_saga(&admin, &own_id, "AWAITING_APPROVAL").await;
                    path(format!("/sagas/{own_id}/compensate"))
                }
                ("GET", "/notifications/{id}") => path(format!("/notifications/{notification_id}")),
                ("GET", "/bookingLists/{bookingId}") => path(format!("/bookingLists/{booking_id}")),
                (_, template) => path(template.to_string()),
            };
            let mut request = stack.request(row.method.clone(), &call.path, token);
            if let Some(body) = &call.body {
                request = request.json(body);
            }
            // The event stream stays open: its status is all that is looked at.
            let status = request.send().await.expect("request sent").status();
            let expected = row.expected[caller_index];
            if status.as_u16() != expected {
                mismatches.push(format!(
                    "{} {} as {caller}: expected {expected}, got {status}",
                    row.method, call.path
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // A path no service owns is a 404 for everyone, token or not.
    for token in tokens {
        let response = stack
            .request(Method::GET, "/no-such-thing", token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
}

fn path(path: String) -> Call {
    Call { path, body: None }
}

fn slot_body(room: i64, start: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "roomId": room,
        "useStartDtm": start.to_rfc3339(),
        "useEndDtm": (start + chrono::Duration::hours(1)).to_rfc3339(),
    })
}
