//! The original project's walkthrough, replayed through the gateway against the real services
//! with its field names, its compact times (`yyyyMMddHHmmss`) and its way of deciding
//! (`POST /confirms {bookingId, status}`), as its command-line client sent them: every field a
//! JSON string.
//!
//! Adapted where the original cannot work as written: its example booking ends before it starts
//! (that must be refused, saying so) and lies in the past, so the replay books the same room
//! for a future slot; ids are the ones the services answer, not the example's numbers; it
//! writes `/confirm` and `/notification` where the resources are `/confirms` and
//! `/notifications`; and every call carries a bearer token (the booker's, or an admin's to
//! decide).

use chrono::{DateTime, Duration, Utc};
use platform::testkit::eventually;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    helpers::{admin_token, token},
    stack::{future, Stack, WAIT},
};

const BOOKER: &str = "05527";

fn compact(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%S").to_string()
}

/// A JSON call as the original's command-line client made it.
async fn httpie(
    stack: &Stack,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = stack
        .request(method, path, Some(token))
        .header("accept", "application/json, */*;q=0.5");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The booker's notifications of `kind` about `booking_id`, once there is one.
async fn wait_mail(stack: &Stack, booker: &str, booking_id: &str, kind: &str) -> Value {
    eventually(&format!("a {kind} notification"), WAIT, || async {
        let (status, list) = httpie(stack, Method::GET, "/notifications", booker, None).await;
        assert_eq!(status, 200, "{list}");
        list.as_array()?
            .iter()
            .find(|n| n["bookingId"] == booking_id && n["kind"] == kind)
            .cloned()
    })
    .await
}

/// The booker's row for `booking_id` in the booking list, once it shows `confirm_status`.
async fn wait_row(stack: &Stack, booker: &str, booking_id: &str, confirm_status: &str) -> Value {
    eventually(
        &format!("the booking list to show {confirm_status}"),
        WAIT,
        || async {
            let (status, page) = httpie(stack, Method::GET, "/bookingLists", booker, None).await;
            assert_eq!(status, 200, "{page}");
            page["items"]
                .as_array()?
                .iter()
                .find(|r| r["bookingId"] == booking_id && r["confirmStatus"] == confirm_status)
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_walkthrough_books_lists_denies_and_notifies_through_the_gateway() {
    let stack = Stack::start(|_| {}).await;
    let booker = token(BOOKER, &["user"]);
    let admin = admin_token();

    // 1. bookingCreate, exactly as in the original: the end lies before the start.
    let (status, problem) = httpie(
        &stack,
        Method::POST,
        "/bookings",
        &booker,
        Some(json!({
            "bookingUserId": BOOKER, "roomId": "102",
            "useEndDtm": "20210708153000", "useStartDtm": "20210708173000",
        })),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["detail"], "useEndDtm must be after useStartDtm");

    // The same request for a future two hours of room 102.
    let start = future(5, 15);
    let (status, booking) = httpie(
        &stack,
        Method::POST,
        "/bookings",
        &booker,
        Some(json!({
            "bookingUserId": BOOKER, "roomId": "102",
            "useEndDtm": compact(start + Duration::hours(2)), "useStartDtm": compact(start),
        })),
    )
    .await;
    assert_eq!(status, 201, "{booking}");
    assert_eq!(booking["bookingUserId"], BOOKER);
    assert_eq!(booking["roomId"], 102);
    assert_eq!(booking["status"], "BOOKED");
    let parsed = |field: &str| {
        DateTime::parse_from_rfc3339(booking[field].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(parsed("useStartDtm"), start);
    assert_eq!(parsed("useEndDtm"), start + Duration::hours(2));
    let booking_id = booking["id"].as_str().unwrap().to_string();

    // 2. confirmRequest: the approval request is registered (the saga opened it).
    let confirm = eventually("the approval request", WAIT, || async {
        let (status, confirm) = httpie(
            &stack,
            Method::POST,
            "/confirms",
            &admin,
            Some(json!({"bookingId": booking_id, "status": "BOOKED", "bookinguserId": BOOKER})),
        )
        .await;
        match status {
            200 => Some(confirm),
            404 => None,
            other => panic!("{other}: {confirm}"),
        }
    })
    .await;
    assert_eq!(confirm["bookingId"], booking_id);
    assert_eq!(confirm["status"], "BOOKED");
    assert_eq!(confirm["bookingUserId"], BOOKER);

    // 3. notification: the booker was told the booking was made.
    let mail = wait_mail(&stack, &booker, &booking_id, "BOOKED").await;
    assert_eq!(mail["bookingUserId"], BOOKER);
    assert_eq!(mail["roomId"], 102);

    // 4. bookingList (CQRS): the booking with its pending approval.
    let row = wait_row(&stack, &booker, &booking_id, "BOOKED").await;
    assert_eq!(row["bookingUserId"], BOOKER);
    assert_eq!(row["roomId"], 102);
    assert_eq!(row["useStartDtm"], booking["useStartDtm"]);

    // 5. confirmDenied.
    let (status, denied) = httpie(
        &stack,
        Method::POST,
        "/confirms",
        &admin,
        Some(json!({"bookingId": booking_id, "status": "DENIED", "userId": BOOKER})),
    )
    .await;
    assert_eq!(status, 200, "{denied}");
    assert_eq!(denied["status"], "DENIED");
    assert_eq!(denied["bookingId"], booking_id);

    // 6. the denial's notification, and the booking undone.
    wait_mail(&stack, &booker, &booking_id, "DENIED").await;
    stack.wait_saga(&admin, &booking_id, "COMPENSATED").await;
    let (status, cancelled) = httpie(
        &stack,
        Method::GET,
        &format!("/bookings/{booking_id}"),
        &booker,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["cancelReason"], "DENIED");
    wait_row(&stack, &booker, &booking_id, "DENIED").await;

    // The slot is free again, and this time the admin approves the same way.
    let (status, again) = httpie(
        &stack,
        Method::POST,
        "/bookings",
        &booker,
        Some(json!({
            "bookingUserId": BOOKER, "roomId": "102",
            "useEndDtm": compact(start + Duration::hours(2)), "useStartDtm": compact(start),
        })),
    )
    .await;
    assert_eq!(status, 201, "{again}");
    let again_id = again["id"].as_str().unwrap().to_string();
    stack.wait_confirm(&admin, &again_id).await;
    let (status, approved) = httpie(
        &stack,
        Method::POST,
        "/confirms",
        &admin,
        Some(json!({"bookingId": again_id, "status": "CONFIRMED"})),
    )
    .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "CONFIRMED");
    stack.wait_saga(&admin, &again_id, "COMPLETED").await;
    let (_, confirmed) = httpie(
        &stack,
        Method::GET,
        &format!("/bookings/{again_id}"),
        &booker,
        None,
    )
    .await;
    assert_eq!(confirmed["status"], "CONFIRMED");
    wait_mail(&stack, &booker, &again_id, "CONFIRMED").await;
    wait_row(&stack, &booker, &again_id, "CONFIRMED").await;

    // A decision the other way is refused now, as with PATCH.
    let (status, refused) = httpie(
        &stack,
        Method::POST,
        "/confirms",
        &admin,
        Some(json!({"bookingId": again_id, "status": "DENIED"})),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["type"], "/problems/confirm-decided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deciding_by_booking_id_refuses_what_it_cannot_use() {
    let stack = Stack::start(|_| {}).await;
    let admin = admin_token();
    let cases = [
        (json!({"bookingId": 1, "status": "DENIED"}), 400),
        (json!({"bookingId": "3", "status": "DENIED"}), 400),
        (
            json!({"bookingId": "96ccefb4-6f1e-4172-b7f3-b8709fb7fab0", "status": "MAYBE"}),
            400,
        ),
        (json!({"status": "DENIED"}), 400),
        (
            json!({"bookingId": "96ccefb4-6f1e-4172-b7f3-b8709fb7fab0", "status": "DENIED"}),
            404,
        ),
    ];
    for (body, expected) in cases {
        let (status, problem) = httpie(
            &stack,
            Method::POST,
            "/confirms",
            &admin,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, expected, "{body}: {problem}");
        assert!(problem["type"].as_str().unwrap().starts_with("/problems/"));
    }
}
