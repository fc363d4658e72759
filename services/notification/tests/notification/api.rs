//! `GET /notifications`: who sees what, filters, paging, and problem details for bad input.

use platform::testkit::TestBackend;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, Booking};

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

async fn users_see_the_mails_of_their_bookings_and_admins_see_all(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let alice = Booking::new();
    let bob = Booking::of("bob", Some("bob@example.com"));
    for b in [&alice, &bob] {
        app.publish(&b.created()).await;
        app.publish(&b.confirm_requested()).await;
    }
    app.publish(&alice.confirmed()).await;
    app.wait_settled(alice.id, 4).await;
    app.wait_settled(bob.id, 3).await;

    let (status, ctype, mine) = app.get("/notifications", "alice", "user").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/json"));
    let mine = mine.as_array().unwrap().clone();
    assert_eq!(
        mine.len(),
        2,
        "alice's two mails, not the admins' nor bob's"
    );
    for r in &mine {
        assert_eq!(r["recipient"], "alice@example.com");
        assert_eq!(r["bookingUserId"], "alice");
        assert_eq!(r["status"], "SENT");
        assert!(
            r["sentAt"].is_string() && r["subject"].is_string() && r["mailMessageId"].is_string()
        );
    }
    assert_eq!(mine[0]["kind"], "CONFIRMED", "newest first");

    let (_, _, all) = app.get("/notifications", "admin", "user,admin").await;
    assert_eq!(all.as_array().unwrap().len(), 7);
    let (_, _, approvals) = app
        .get(
            "/notifications?kind=APPROVAL_REQUESTED",
            "admin",
            "user,admin",
        )
        .await;
    assert_eq!(approvals.as_array().unwrap().len(), 4);
    let (_, _, of_bob) = app
        .get(
            &format!("/notifications?bookingId={}&status=SENT", bob.id),
            "admin",
            "user,admin",
        )
        .await;
    assert_eq!(of_bob.as_array().unwrap().len(), 3);
    let (_, _, failed) = app
        .get("/notifications?status=FAILED", "admin", "user,admin")
        .await;
    assert!(failed.as_array().unwrap().is_empty());
    // Bob asking about Alice's booking sees nothing of it.
    let (_, _, snoop) = app
        .get(
            &format!("/notifications?bookingId={}", alice.id),
            "bob",
            "user",
        )
        .await;
    assert!(snoop.as_array().unwrap().is_empty());

    // Paging walks the same order without gaps or repeats.
    let (_, _, everything) = app
        .get("/notifications?limit=1000", "admin", "user,admin")
        .await;
    let mut paged = Vec::new();
    for offset in (0..7).step_by(3) {
        let (_, _, page) = app
            .get(
                &format!("/notifications?limit=3&offset={offset}"),
                "admin",
                "user,admin",
            )
            .await;
        paged.extend(ids(&page));
    }
    assert_eq!(paged, ids(&everything));
}

async fn bad_filters_are_400_problems(backend: TestBackend) {
    let app = spawn_app(backend).await;
    for query in [
        "status=DELIVERED",
        "kind=WHATEVER",
        "bookingId=not-a-uuid",
        "limit=0",
        "limit=5000",
        "limit=ten",
        "offset=-1",
        "colour=blue",
    ] {
        let (status, ctype, problem) = app
            .get(&format!("/notifications?{query}"), "admin", "user,admin")
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{query}");
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{query}"
        );
    }
    let (status, _, problem) = app
        .get("/notifications?status=PAUSED", "alice", "user")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem["detail"].as_str().unwrap().contains("PENDING"),
        "{problem}"
    );
}

async fn one_record_is_shown_to_its_booker_and_admins_only(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let alice = Booking::new();
    app.publish(&alice.created()).await;
    let records = app.wait_settled(alice.id, 1).await;
    let path = format!("/notifications/{}", records[0]["id"].as_str().unwrap());

    let (status, _, own) = app.get(&path, "alice", "user").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["kind"], "BOOKED");
    assert_eq!(own["eventType"], "BookingCreated");
    assert_eq!(own["useStartDtm"], "2026-11-24T09:00:00.000Z");
    let (status, _, _) = app.get(&path, "admin", "user,admin").await;
    assert_eq!(status, StatusCode::OK);
    for (path, user) in [
        (path.as_str(), "bob"),
        (
            "/notifications/0190d3f0-0000-7000-8000-000000000000",
            "admin",
        ),
        ("/notifications/nonsense", "admin"),
    ] {
        let (status, ctype, _) = app.get(path, user, "user").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} as {user}");
        assert_eq!(ctype, "application/problem+json");
    }
    let resp = app
        .http
        .get(format!("{}/notifications", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

crate::on_both_backends!(
    users_see_the_mails_of_their_bookings_and_admins_see_all,
    bad_filters_are_400_problems,
    one_record_is_shown_to_its_booker_and_admins_only,
);
