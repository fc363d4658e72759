//! Each saga flow yields the right mails to the right people, with the right subject and
//! calendar invitation (checked with independent parsers: mail-parser and icalendar).

use platform::contract::CancelReason;
use platform::testkit::TestBackend;

use crate::helpers::{spawn_app, Booking, Mail, ADMINS};

fn booker_mails(mails: &[Mail], booking: &Booking) -> Vec<Mail> {
    let email = booking.email.clone().unwrap();
    let mut mine: Vec<Mail> = mails.iter().filter(|m| m.to == email).cloned().collect();
    mine.sort_by_key(|m| m.invite().sequence);
    mine
}

const SLOT_IN_BERLIN: &str = "Tue 24 Nov 2026, 10:00–11:00 CET";

fn assert_common(mail: &Mail, booking: &Booking) {
    assert_eq!(mail.from, "roombook@roombook.test");
    assert_eq!(
        mail.envelope_to,
        vec![mail.to.clone()],
        "one recipient per mail"
    );
    assert!(mail.text.contains(SLOT_IN_BERLIN), "{}", mail.text);
    assert!(mail.text.contains("Europe/Berlin"), "{}", mail.text);
    assert!(mail.html.contains(SLOT_IN_BERLIN), "{}", mail.html);
    assert!(mail.html.contains("<table>"), "{}", mail.html);
    assert_eq!(mail.calendar_filename.as_deref(), Some("invite.ics"));
    let invite = mail.invite();
    assert_eq!(
        invite.method, mail.calendar_method,
        "content type and ICS agree"
    );
    assert_eq!(invite.uid, format!("{}@roombook.test", booking.id));
    assert_eq!((invite.start, invite.end), (booking.start, booking.end));
    assert_eq!(invite.summary, "Room 102");
}

async fn an_approved_booking_mails_the_booker_twice_and_each_admin_once(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let booking = Booking::new();
    let (created, requested, confirmed) = (
        booking.created(),
        booking.confirm_requested(),
        booking.confirmed(),
    );
    for env in [&created, &requested, &confirmed] {
        app.publish(env).await;
    }
    let records = app.wait_settled(booking.id, 4).await;
    assert!(
        records
            .iter()
            .all(|r| r["status"] == "SENT" && r["attempts"] == 1),
        "{records:#?}"
    );
    let mails = app.wait_mails(booking.id, 4).await;
    assert_eq!(mails.len(), 4);

    let booker = booker_mails(&mails, &booking);
    assert_eq!(booker.len(), 2);
    let (booked, approved) = (&booker[0], &booker[1]);
    assert_eq!(
        booked.subject,
        format!("Booking received: room 102, {SLOT_IN_BERLIN} (awaiting approval)")
    );
    assert_eq!(
        approved.subject,
        format!("Booking confirmed: room 102, {SLOT_IN_BERLIN}")
    );
    for mail in &booker {
        assert_common(mail, &booking);
        assert_eq!(mail.invite().attendee.as_deref(), Some("alice@example.com"));
        assert!(mail.text.starts_with("Hello alice,"), "{}", mail.text);
    }
    let (i1, i2) = (booked.invite(), approved.invite());
    assert_eq!(
        (i1.method.as_str(), i1.status.as_str()),
        ("REQUEST", "TENTATIVE")
    );
    assert_eq!(
        (i2.method.as_str(), i2.status.as_str()),
        ("REQUEST", "CONFIRMED")
    );
    assert!(i2.sequence > i1.sequence, "a calendar applies the update");
    assert_eq!(
        booked.message_id,
        format!("{}.booker@roombook.test", created.message_id)
    );
    assert_eq!(
        approved.message_id,
        format!("{}.booker@roombook.test", confirmed.message_id)
    );

    let mut admin_mails: Vec<&Mail> = mails
        .iter()
        .filter(|m| m.to != "alice@example.com")
        .collect();
    admin_mails.sort_by(|a, b| a.to.cmp(&b.to));
    let mut expected: Vec<&str> = ADMINS.to_vec();
    expected.sort();
    assert_eq!(
        admin_mails
            .iter()
            .map(|m| m.to.as_str())
            .collect::<Vec<_>>(),
        expected
    );
    for mail in &admin_mails {
        assert_common(mail, &booking);
        assert_eq!(
            mail.subject,
            format!("Approval needed: room 102, {SLOT_IN_BERLIN}, booked by alice")
        );
        assert!(mail.text.contains("Decide by"), "{}", mail.text);
        let invite = mail.invite();
        assert_eq!(
            (invite.method.as_str(), invite.status.as_str()),
            ("PUBLISH", "TENTATIVE")
        );
        assert_eq!(invite.attendee, None);
        assert!(mail
            .message_id
            .starts_with(&requested.message_id.to_string()));
    }
    assert_ne!(admin_mails[0].message_id, admin_mails[1].message_id);

    // Operators see the events it took in on its /metrics.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["BookingCreated", "ConfirmRequested", "BookingConfirmed"] {
        let kind = format!(r#"type="{kind}""#);
        assert!(
            platform::testkit::has_series(
                &metrics,
                "roombook_messages_consumed_total",
                &[r#"consumer="notification""#, &kind]
            ),
            "{kind} consumed:\n{metrics}"
        );
    }
}

async fn a_denied_booking_withdraws_the_invitation_and_gives_the_reason(backend: TestBackend) {
    let app = spawn_app(backend).await;
    let booking = Booking::new();
    app.publish(&booking.created()).await;
    app.publish(&booking.confirm_requested()).await;
    app.publish(&booking.cancelled(2, CancelReason::Denied, Some("Room closed for cleaning")))
        .await;
    app.wait_settled(booking.id, 4).await;
    let mails = app.wait_mails(booking.id, 4).await;
    let booker = booker_mails(&mails, &booking);
    assert_eq!(booker.len(), 2);
    let denied = &booker[1];
    assert_common(denied, &booking);
    assert_eq!(
        denied.subject,
        format!("Booking declined: room 102, {SLOT_IN_BERLIN}")
    );
    assert!(
        denied.text.contains("Room closed for cleaning"),
        "{}",
        denied.text
    );
    let invite = denied.invite();
    assert_eq!(
        (invite.method.as_str(), invite.status.as_str()),
        ("CANCEL", "CANCELLED")
    );
    assert_eq!(
        invite.uid,
        booker[0].invite().uid,
        "the same calendar entry"
    );
    assert!(invite.sequence > booker[0].invite().sequence);
}

async fn cancelled_and_expired_bookings_withdraw_the_invitation(backend: TestBackend) {
    let app = spawn_app(backend).await;
    // Cancelled by the owner while waiting for approval.
    let cancelled = Booking::new();
    app.publish(&cancelled.created()).await;
    app.publish(&cancelled.cancelled(2, CancelReason::UserCancelled, None))
        .await;
    // Not decided before the deadline.
    let expired = Booking::new();
    app.publish(&expired.created()).await;
    app.publish(&expired.cancelled(2, CancelReason::Expired, None))
        .await;
    // Approved, then cancelled by the owner: three mails, the invitation updated twice.
    let later = Booking::new();
    app.publish(&later.created()).await;
    app.publish(&later.confirmed()).await;
    app.publish(&later.cancelled(3, CancelReason::UserCancelled, Some("cancelled by admin")))
        .await;

    for (booking, count, subject) in [
        (
            &cancelled,
            2,
            format!("Booking cancelled: room 102, {SLOT_IN_BERLIN}"),
        ),
        (
            &expired,
            2,
            format!("Booking expired without approval: room 102, {SLOT_IN_BERLIN}"),
        ),
        (
            &later,
            3,
            format!("Booking cancelled: room 102, {SLOT_IN_BERLIN}"),
        ),
    ] {
        app.wait_settled(booking.id, count).await;
        let mails = booker_mails(&app.wait_mails(booking.id, count).await, booking);
        assert_eq!(mails.len(), count);
        let last = mails.last().unwrap();
        assert_common(last, booking);
        assert_eq!(last.subject, subject);
        let invite = last.invite();
        assert_eq!(
            (invite.method.as_str(), invite.status.as_str()),
            ("CANCEL", "CANCELLED")
        );
        assert_eq!(invite.sequence as usize, count - 1);
    }
    let later_mails = booker_mails(&app.mails_of(later.id), &later);
    assert!(later_mails[2].text.contains("cancelled by admin"));
    assert_eq!(later_mails[1].invite().status, "CONFIRMED");
}

crate::on_both_backends!(
    an_approved_booking_mails_the_booker_twice_and_each_admin_once,
    a_denied_booking_withdraws_the_invitation_and_gives_the_reason,
    cancelled_and_expired_bookings_withdraw_the_invitation,
);
