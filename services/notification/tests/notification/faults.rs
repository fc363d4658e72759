//! Bad input and faults: duplicates, SMTP 4xx and 5xx, unusable addresses, events out of order
//! or for unknown bookings, and the local mail folder or mbox when no SMTP server is configured.

use platform::testkit::TestBackend;
use std::time::Duration;

use chrono::Utc;
use platform::{clock::ManualClock, contract::CancelReason, testkit::eventually};
use roombook_notification::{local_mail, MailTransport};

use crate::helpers::{spawn_app, spawn_app_with, Booking, Mail, WAIT};

async fn a_redelivered_event_sends_no_second_mail(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let booking = Booking::new();
    let (created, confirmed) = (booking.created(), booking.confirmed());
    app.publish(&created).await;
    app.publish(&confirmed).await;
    app.wait_settled(booking.id, 2).await;
    app.wait_mails(booking.id, 2).await;

    // The same events again, as new JetStream messages (the server does not drop them).
    app.publish_again(&created).await;
    app.publish_again(&confirmed).await;
    app.publish_again(&created).await;
    app.wait_consumed().await;

    let records = app.wait_settled(booking.id, 2).await;
    assert!(records.iter().all(|r| r["status"] == "SENT"));
    assert_eq!(app.mails_of(booking.id).len(), 2);
}

async fn a_4xx_reply_is_retried_until_the_server_accepts(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let booking = Booking::of("bob", Some("bob@tempfail-once.test"));
    app.publish(&booking.created()).await;
    let records = app.wait_settled(booking.id, 1).await;
    assert_eq!(records[0]["status"], "SENT", "{records:#?}");
    assert_eq!(records[0]["attempts"], 2);
    assert_eq!(records[0]["lastError"], serde_json::Value::Null);
    assert_eq!(app.wait_mails(booking.id, 1).await.len(), 1);
}

async fn a_5xx_reply_fails_that_recipient_with_the_reason_while_others_get_theirs(
    backend: TestBackend,
) {
    let app = spawn_app(backend).await;
    let booking = Booking::of("carol", Some("carol@reject.test"));
    app.publish(&booking.created()).await;
    app.publish(&booking.confirm_requested()).await;
    let records = app.wait_settled(booking.id, 3).await;
    let booker = records
        .iter()
        .find(|r| r["recipientRole"] == "BOOKER")
        .unwrap();
    assert_eq!(booker["status"], "FAILED", "{booker:#}");
    assert_eq!(booker["attempts"], 1, "a 5xx is not retried");
    let reason = booker["lastError"].as_str().unwrap();
    assert!(
        reason.contains("550") && reason.contains("refused"),
        "{reason}"
    );
    assert!(records
        .iter()
        .filter(|r| r["recipientRole"] == "ADMIN")
        .all(|r| r["status"] == "SENT"));
    assert_eq!(app.wait_mails(booking.id, 2).await.len(), 2);
}

async fn a_server_that_keeps_deferring_is_given_up_on_after_the_attempt_limit(
    backend: TestBackend,
) {
    let app = spawn_app_with(backend, |c| c.delivery.max_attempts = 3).await;
    let booking = Booking::of("dave", Some("dave@tempfail.test"));
    app.publish(&booking.created()).await;
    let records = app.wait_settled(booking.id, 1).await;
    assert_eq!(records[0]["status"], "FAILED");
    assert_eq!(records[0]["attempts"], 3);
    let reason = records[0]["lastError"].as_str().unwrap();
    assert!(
        reason.starts_with("gave up after 3 attempts") && reason.contains("451"),
        "{reason}"
    );
}

async fn a_booker_without_a_usable_address_is_failed_with_the_reason(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let nobody = Booking::of("erin", None);
    let garbled = Booking::of("frank", Some("frank at example dot com"));
    for b in [&nobody, &garbled] {
        app.publish(&b.created()).await;
        app.publish(&b.confirmed()).await;
    }
    for (b, needle) in [
        (&nobody, "has no e-mail address"),
        (&garbled, "not a valid e-mail address"),
    ] {
        let records = app.wait_settled(b.id, 2).await;
        for r in &records {
            assert_eq!(r["status"], "FAILED", "{r:#}");
            assert_eq!(r["attempts"], 0, "no mail server was bothered");
            assert!(r["lastError"].as_str().unwrap().contains(needle), "{r:#}");
            assert!(r["subject"].as_str().is_some(), "still described: {r:#}");
        }
    }
    app.wait_consumed().await;
    assert!(app.mails_of(nobody.id).is_empty() && app.mails_of(garbled.id).is_empty());
}

async fn an_event_that_overtakes_its_booking_waits_for_it_and_the_stale_one_is_skipped(
    backend: TestBackend,
) {
    let app = spawn_app(backend).await;
    let booking = Booking::new();
    let (created, confirmed) = (booking.created(), booking.confirmed());
    app.publish(&confirmed).await;
    app.wait_consumed().await;
    let records = app.records(booking.id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "WAITING");
    assert_eq!(records[0]["recipient"], serde_json::Value::Null);

    // The creation arrives late: the confirmation goes out, the older "received" does not.
    app.publish(&created).await;
    let records = app.wait_settled(booking.id, 2).await;
    let by_type = |t: &str| {
        records
            .iter()
            .find(|r| r["eventType"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(by_type("BookingConfirmed")["status"], "SENT");
    let stale = by_type("BookingCreated");
    assert_eq!(stale["status"], "SKIPPED");
    assert!(stale["lastError"].as_str().unwrap().contains("superseded"));
    let mails = app.wait_mails(booking.id, 1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].invite().status, "CONFIRMED");
}

async fn a_different_event_with_a_version_already_mailed_is_skipped(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    app.publish(&booking.confirmed()).await;
    app.wait_mails(booking.id, 2).await;

    // A new message (its own id) claiming the version the confirmation had.
    let clash = booking.cancelled(2, CancelReason::UserCancelled, None);
    app.publish(&clash).await;
    let records = app.wait_settled(booking.id, 3).await;
    let record = records
        .iter()
        .find(|r| r["eventType"] == "BookingCancelled")
        .unwrap();
    assert_eq!(record["status"], "SKIPPED", "{record:#}");
    assert!(
        record["lastError"]
            .as_str()
            .unwrap()
            .contains("a repeat of booking event version 2"),
        "{record:#}"
    );
    app.wait_consumed().await;
    assert_eq!(app.mails_of(booking.id).len(), 2);
}

async fn an_event_for_an_unknown_booking_fails_after_the_grace_period(backend: TestBackend) {
    let clock = ManualClock::starting_at(Utc::now());
    let app = spawn_app_with(backend, |c| {
        c.clock = std::sync::Arc::new(clock.clone());
        c.delivery.unknown_booking_grace = Duration::from_secs(600);
    })
    .await;
    let booking = Booking::new();
    app.publish(&booking.cancelled(3, CancelReason::Denied, None))
        .await;
    app.wait_consumed().await;
    assert_eq!(app.records(booking.id).await[0]["status"], "WAITING");

    clock.advance(chrono::Duration::seconds(601));
    let records = app.wait_settled(booking.id, 1).await;
    assert_eq!(records[0]["status"], "FAILED");
    let reason = records[0]["lastError"].as_str().unwrap();
    assert!(reason.starts_with("unknown booking"), "{reason}");
}

async fn events_older_than_the_age_limit_are_recorded_but_not_mailed(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let booking = Booking::new();
    let mut created = booking.created();
    created.occurred_at = Utc::now() - chrono::Duration::days(30);
    app.publish(&created).await;
    let records = app.wait_settled(booking.id, 1).await;
    assert_eq!(records[0]["status"], "SKIPPED");
    assert!(records[0]["lastError"]
        .as_str()
        .unwrap()
        .contains("older than"));
}

async fn a_mail_folder_removed_while_running_is_made_again(backend: TestBackend) {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("mail");
    let app = spawn_app_with(backend, |c| c.transport = MailTransport::Files(dir.clone())).await;
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    app.wait_settled(booking.id, 1).await;
    std::fs::remove_dir_all(&dir).unwrap();

    app.publish(&booking.confirm_requested()).await;
    let records = app.wait_settled(booking.id, 3).await;
    assert!(records.iter().all(|r| r["status"] == "SENT"), "{records:?}");
    let written = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .count();
    assert_eq!(
        written, 2,
        "the two approval requests, in the folder made again"
    );
}

async fn without_a_mail_server_each_mail_is_written_to_the_mail_folder(backend: TestBackend) {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("mail");
    let app = spawn_app_with(backend, |c| c.transport = MailTransport::Files(dir.clone())).await;
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    app.publish(&booking.confirm_requested()).await;
    app.wait_settled(booking.id, 3).await;
    let files = eventually("three .eml files", WAIT, || async {
        let files: Vec<_> = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        (files.len() == 3).then_some(files)
    })
    .await;
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("-booked-alice@example.com-")),
        "{names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.contains("-approval-requested-"))
            .count(),
        2
    );
    for file in files {
        let mail = Mail::from_stored(std::fs::read(file).unwrap());
        mail.invite();
        assert!(mail.subject.contains("room 102"));
    }
    assert!(app.sink.received().is_empty());
}

async fn with_an_mbox_each_mail_is_appended_to_it(backend: TestBackend) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("mail.mbox");
    let app = spawn_app_with(backend, |c| c.transport = MailTransport::Mbox(path.clone())).await;
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    app.publish(&booking.confirm_requested()).await;
    let records = app.wait_settled(booking.id, 3).await;
    assert!(records.iter().all(|r| r["status"] == "SENT"), "{records:?}");
    // Settled means recorded SENT, which follows the append: the file holds all three now.
    let mails: Vec<Mail> = local_mail::mboxrd_mails(&std::fs::read(&path).unwrap())
        .into_iter()
        .map(Mail::from_stored)
        .collect();
    assert_eq!(mails.len(), 3);
    for mail in &mails {
        mail.invite();
        assert!(mail.subject.contains("room 102"), "{}", mail.subject);
    }
    assert_eq!(
        mails
            .iter()
            .filter(|m| m.to.contains("alice@example.com"))
            .count(),
        1,
        "the booker's mail, besides the two approval requests"
    );
    assert!(app.sink.received().is_empty());
}

async fn mail_waits_while_the_mbox_cannot_be_written_and_goes_once_it_can(backend: TestBackend) {
    let folder = tempfile::tempdir().unwrap();
    let spool = folder.path().join("spool");
    let path = spool.join("mail.mbox");
    let app = spawn_app_with(backend, |c| c.transport = MailTransport::Mbox(path.clone())).await;
    // The file and its folder gone: the service cannot make them again.
    std::fs::remove_dir_all(&spool).unwrap();
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    let record = app.wait_retrying(booking.id, 1).await;
    let reason = record["lastError"].as_str().unwrap();
    assert!(reason.contains("mail.mbox"), "{reason}");

    std::fs::create_dir(&spool).unwrap();
    let records = app.wait_settled(booking.id, 1).await;
    assert_eq!(records[0]["status"], "SENT");
    let mails = local_mail::mboxrd_mails(&std::fs::read(&path).unwrap());
    assert_eq!(mails.len(), 1, "written once, when it could be");
}

async fn mail_waits_while_the_smtp_server_is_down_and_goes_once_it_is_back(backend: TestBackend) {
    let mut app = spawn_app(backend).await;
    app.sink.stop();
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    let record = app.wait_retrying(booking.id, 2).await;
    let reason = record["lastError"].as_str().unwrap();
    assert!(reason.contains("cannot reach the mail server"), "{reason}");
    assert!(record["nextAttemptAt"].is_string());

    app.sink.restart();
    let records = app.wait_settled(booking.id, 1).await;
    assert_eq!(records[0]["status"], "SENT");
    assert_eq!(app.wait_mails(booking.id, 1).await.len(), 1);
}

async fn events_published_while_the_service_is_down_are_mailed_after_it_restarts(
    backend: TestBackend,
) {
    let mut app = spawn_app(backend).await;
    app.stop().await;
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    app.publish(&booking.confirm_requested()).await;
    app.publish(&booking.confirmed()).await;
    app.start().await;
    app.wait_settled(booking.id, 4).await;
    assert_eq!(app.wait_mails(booking.id, 4).await.len(), 4);
}

crate::on_both_backends!(
    a_redelivered_event_sends_no_second_mail,
    a_4xx_reply_is_retried_until_the_server_accepts,
    a_5xx_reply_fails_that_recipient_with_the_reason_while_others_get_theirs,
    a_server_that_keeps_deferring_is_given_up_on_after_the_attempt_limit,
    a_booker_without_a_usable_address_is_failed_with_the_reason,
    an_event_that_overtakes_its_booking_waits_for_it_and_the_stale_one_is_skipped,
    a_different_event_with_a_version_already_mailed_is_skipped,
    an_event_for_an_unknown_booking_fails_after_the_grace_period,
    events_older_than_the_age_limit_are_recorded_but_not_mailed,
    without_a_mail_server_each_mail_is_written_to_the_mail_folder,
    a_mail_folder_removed_while_running_is_made_again,
    with_an_mbox_each_mail_is_appended_to_it,
    mail_waits_while_the_mbox_cannot_be_written_and_goes_once_it_can,
    mail_waits_while_the_smtp_server_is_down_and_goes_once_it_is_back,
    events_published_while_the_service_is_down_are_mailed_after_it_restarts,
);
