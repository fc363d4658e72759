//! Turning a delivery record into a mail: subject, plain-text and HTML bodies from the templates
//! below, and the calendar invitation ([`crate::ics`]), assembled with lettre's builder as
//!
//! ```text
//! multipart/mixed
//! ├── multipart/alternative
//! │   ├── text/plain
//! │   └── text/html
//! └── invite.ics   text/calendar; method=REQUEST|CANCEL|PUBLISH
//! ```
//!
//! Rendering is a pure function of the record and the [`MailSettings`], so a retried mail is
//! the same mail (same `Message-ID`, same invitation).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use lettre::{
    message::{header::ContentType, Attachment, Mailbox, MultiPart},
    Address, Message,
};
use uuid::Uuid;

use crate::{
    domain::{Kind, Notification, Role},
    ics::{EventStatus, Invite, Method, Person},
};

/// How mails look: who sends them, and in which time zone times are written.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub from: Mailbox,
    pub time_zone: Tz,
}

impl MailSettings {
    /// The domain of the sender's address: the right-hand side of our Message-IDs and UIDs.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }
}

/// The `Message-ID` for the mail of event `event_id` to `recipient_key`: readable, stable
/// across retries, and different per recipient.
pub fn message_id(event_id: Uuid, recipient_key: &str, domain: &str) -> String {
    let who = if recipient_key == crate::store::BOOKER_KEY {
        "booker".to_string()
    } else {
        format!("admin-{:016x}", fnv1a(recipient_key.as_bytes()))
    };
    format!("<{event_id}.{who}@{domain}>")
}

/// FNV-1a, 64 bit: a stable short fingerprint (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Parses an address as the mail will need it.
pub fn parse_address(s: &str) -> Result<Address, String> {
    s.trim()
        .parse::<Address>()
        .map_err(|e| format!("`{s}` is not a valid e-mail address ({e})"))
}

/// `Tue 24 Nov 2026, 10:00–11:00 CET`, or both dates when the slot spans midnight.
pub fn format_slot(start: DateTime<Utc>, end: DateTime<Utc>, tz: Tz) -> String {
    let (s, e) = (start.with_timezone(&tz), end.with_timezone(&tz));
    if s.date_naive() == e.date_naive() {
        format!(
            "{}, {}–{} {}",
            s.format("%a %-d %b %Y"),
            s.format("%H:%M"),
            e.format("%H:%M"),
            e.format("%Z")
        )
    } else {
        format!(
            "{} – {}",
            s.format("%a %-d %b %Y %H:%M %Z"),
            e.format("%a %-d %b %Y %H:%M %Z")
        )
    }
}

fn format_instant(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%a %-d %b %Y %H:%M %Z")
        .to_string()
}

/// What a mail says about a booking, beyond its kind.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub kind: Kind,
    pub booking_id: Uuid,
    pub room_id: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub booking_user_id: &'a str,
    pub detail: Option<&'a str>,
    pub confirm_id: Option<Uuid>,
    pub deadline: Option<DateTime<Utc>>,
}

impl<'a> Facts<'a> {
    /// The facts of a record whose booking is known.
    pub fn of(n: &'a Notification) -> Option<Facts<'a>> {
        let (room_id, start, end) = n.facts()?;
        Some(Facts {
            kind: n.kind,
            booking_id: n.booking_id,
            room_id,
            start,
            end,
            booking_user_id: n.booking_user_id.as_deref().unwrap_or("someone"),
            detail: n.detail.as_deref().filter(|d| !d.trim().is_empty()),
            confirm_id: n.confirm_id,
            deadline: n.approval_deadline,
        })
    }
}

pub fn subject(f: &Facts<'_>, tz: Tz) -> String {
    let slot = format_slot(f.start, f.end, tz);
    let room = f.room_id;
    match f.kind {
        Kind::Booked => format!("Booking received: room {room}, {slot} (awaiting approval)"),
        Kind::Confirmed => format!("Booking confirmed: room {room}, {slot}"),
        Kind::Denied => format!("Booking declined: room {room}, {slot}"),
        Kind::Cancelled => format!("Booking cancelled: room {room}, {slot}"),
        Kind::Expired => format!("Booking expired without approval: room {room}, {slot}"),
        Kind::ApprovalRequested => format!(
            "Approval needed: room {room}, {slot}, booked by {}",
            f.booking_user_id
        ),
    }
}

/// The body of a mail, independent of its format.
struct Body {
    greeting: String,
    lead: String,
    rows: Vec<(&'static str, String)>,
    note: String,
}

fn body(f: &Facts<'_>, tz: Tz) -> Body {
    let room = f.room_id;
    let mut rows = vec![
        ("Room", room.to_string()),
        ("When", format_slot(f.start, f.end, tz)),
    ];
    let greeting = match f.kind {
        Kind::ApprovalRequested => "Hello,".to_string(),
        _ => format!("Hello {},", f.booking_user_id),
    };
    let (lead, status, note) = match f.kind {
        Kind::Booked => (
            format!(
                "we have received your booking of room {room}. It is waiting for an \
                 administrator's approval; you will get another mail when it is decided."
            ),
            "awaiting approval",
            "The attached invitation is tentative: it is confirmed when the booking is \
             approved, and withdrawn if it is not.",
        ),
        Kind::Confirmed => (
            format!("your booking of room {room} has been approved. The room is yours."),
            "confirmed",
            "The attached invitation confirms the entry in your calendar.",
        ),
        Kind::Denied => (
            format!(
                "your booking of room {room} was not approved, so it has been cancelled and \
                 the room is free again."
            ),
            "declined",
            "The attached cancellation removes the entry from your calendar.",
        ),
        Kind::Cancelled => (
            format!("your booking of room {room} has been cancelled."),
            "cancelled",
            "The attached cancellation removes the entry from your calendar.",
        ),
        Kind::Expired => (
            format!(
                "your booking of room {room} was not approved before the approval deadline, so \
                 it has been cancelled and the room is free again."
            ),
            "expired without approval",
            "The attached cancellation removes the entry from your calendar.",
        ),
        Kind::ApprovalRequested => (
            format!(
                "{} has booked room {room} and is waiting for your approval.",
                f.booking_user_id
            ),
            "awaiting your decision",
            "Approve or deny it in Roombook's approval queue (GET /confirms?status=BOOKED). \
             The attached calendar entry is for your information only.",
        ),
    };
    if f.kind == Kind::ApprovalRequested {
        rows.push(("Booked by", f.booking_user_id.to_string()));
        if let Some(deadline) = f.deadline {
            rows.push(("Decide by", format_instant(deadline, tz)));
        }
        if let Some(confirm) = f.confirm_id {
            rows.push(("Approval", confirm.to_string()));
        }
    }
    rows.push(("Status", status.to_string()));
    if let Some(detail) = f.detail {
        rows.push(("Reason", detail.to_string()));
    }
    rows.push(("Booking", f.booking_id.to_string()));
    Body {
        greeting,
        lead,
        rows,
        note: format!("{note} Times are in {}.", tz.name()),
    }
}

fn text_part(b: &Body) -> String {
    let mut out = format!("{}\n\n{}\n\n", b.greeting, b.lead);
    for (label, value) in &b.rows {
        out.push_str(&format!("  {:<10} {value}\n", format!("{label}:")));
    }
    out.push_str(&format!("\n{}\n\n-- \nRoombook\n", b.note));
    out
}

fn html_part(b: &Body, subject: &str) -> String {
    let rows: String = b
        .rows
        .iter()
        .map(|(label, value)| {
            format!(
                "<tr><th align=\"left\" style=\"padding:2px 12px 2px 0\">{}</th><td>{}</td></tr>",
                escape(label),
                escape(value)
            )
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body style=\"font-family:sans-serif\">\n<p>{}</p>\n<p>{}</p>\n<table>{rows}</table>\n\
         <p>{}</p>\n<p style=\"color:#666\">Roombook</p>\n</body></html>\n",
        escape(subject),
        escape(&b.greeting),
        escape(&b.lead),
        escape(&b.note),
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The calendar invitation for a mail.
pub fn invite(
    f: &Facts<'_>,
    role: Role,
    recipient: &str,
    sequence: i64,
    stamp: DateTime<Utc>,
    settings: &MailSettings,
) -> Invite {
    let (method, status) = match (role, f.kind) {
        (Role::Admin, _) | (_, Kind::ApprovalRequested) => {
            (Method::Publish, EventStatus::Tentative)
        }
        (Role::Booker, Kind::Booked) => (Method::Request, EventStatus::Tentative),
        (Role::Booker, Kind::Confirmed) => (Method::Request, EventStatus::Confirmed),
        (Role::Booker, Kind::Denied | Kind::Cancelled | Kind::Expired) => {
            (Method::Cancel, EventStatus::Cancelled)
        }
    };
    Invite {
        method,
        uid: format!("{}@{}", f.booking_id, settings.domain()),
        sequence,
        stamp,
        start: f.start,
        end: f.end,
        summary: format!("Room {}", f.room_id),
        location: format!("Room {}", f.room_id),
        description: format!(
            "Booking {} of room {} by {}.",
            f.booking_id, f.room_id, f.booking_user_id
        ),
        status,
        organizer: Person {
            name: settings.from.name.clone(),
            email: settings.from.email.to_string(),
        },
        attendee: (role == Role::Booker).then(|| Person {
            name: Some(f.booking_user_id.to_string()),
            email: recipient.to_string(),
        }),
    }
}

/// The `SEQUENCE` of a record's invitation: booking events count up from version 1.
pub fn sequence(n: &Notification) -> i64 {
    match n.recipient_role {
        Role::Booker => (n.event_version - 1).max(0),
        Role::Admin => 0,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("the booking of this mail is not known")]
    UnknownBooking,
    #[error("no recipient address")]
    NoRecipient,
    #[error("{0}")]
    BadAddress(String),
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// The complete mail for a record that is ready to send.
pub fn build(n: &Notification, settings: &MailSettings) -> Result<Message, ComposeError> {
    let facts = Facts::of(n).ok_or(ComposeError::UnknownBooking)?;
    let recipient = n.recipient.as_deref().ok_or(ComposeError::NoRecipient)?;
    let address = parse_address(recipient).map_err(ComposeError::BadAddress)?;
    let tz = settings.time_zone;
    let subject = subject(&facts, tz);
    let body = body(&facts, tz);
    let invite = invite(
        &facts,
        n.recipient_role,
        address.as_ref(),
        sequence(n),
        n.occurred_at,
        settings,
    );
    let calendar_type = ContentType::parse(&format!(
        "text/calendar; charset=utf-8; method={}",
        invite.method.as_str()
    ))
    .map_err(|e| ComposeError::Build(e.to_string()))?;
    let name = (n.recipient_role == Role::Booker).then(|| facts.booking_user_id.to_string());
    Message::builder()
        .from(settings.from.clone())
        .to(Mailbox::new(name, address))
        .subject(subject.clone())
        .message_id(Some(n.mail_message_id.clone()))
        // One thread per booking in mail clients.
        .references(format!("<booking-{}@{}>", n.booking_id, settings.domain()))
        .date_now()
        .multipart(
            MultiPart::mixed()
                .multipart(MultiPart::alternative_plain_html(
                    text_part(&body),
                    html_part(&body, &subject),
                ))
                .singlepart(
                    Attachment::new("invite.ics".to_string()).body(invite.to_ics(), calendar_type),
                ),
        )
        .map_err(|e| ComposeError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn facts(kind: Kind) -> Facts<'static> {
        Facts {
            kind,
            booking_id: Uuid::nil(),
            room_id: 102,
            start: Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
            booking_user_id: "alice",
            detail: Some("<b>room closed</b>"),
            confirm_id: None,
            deadline: None,
        }
    }

    #[test]
    fn slots_are_written_in_the_configured_zone() {
        let f = facts(Kind::Confirmed);
        assert_eq!(
            format_slot(f.start, f.end, chrono_tz::Europe::Berlin),
            "Tue 24 Nov 2026, 10:00–11:00 CET"
        );
        assert_eq!(
            format_slot(f.start, f.end, chrono_tz::UTC),
            "Tue 24 Nov 2026, 09:00–10:00 UTC"
        );
        let late = Utc.with_ymd_and_hms(2026, 11, 24, 22, 30, 0).unwrap();
        assert_eq!(
            format_slot(
                late,
                late + chrono::Duration::hours(2),
                chrono_tz::Europe::Berlin
            ),
            "Tue 24 Nov 2026 23:30 CET – Wed 25 Nov 2026 01:30 CET"
        );
    }

    #[test]
    fn every_kind_has_a_distinct_subject_naming_room_and_time() {
        let subjects: std::collections::HashSet<String> = Kind::ALL
            .into_iter()
            .map(|k| subject(&facts(k), chrono_tz::UTC))
            .collect();
        assert_eq!(subjects.len(), Kind::ALL.len());
        for s in subjects {
            assert!(s.contains("room 102") && s.contains("09:00–10:00"), "{s}");
        }
    }

    #[test]
    fn html_escapes_what_people_typed() {
        let f = facts(Kind::Denied);
        let html = html_part(&body(&f, chrono_tz::UTC), "s");
        assert!(html.contains("&lt;b&gt;room closed&lt;/b&gt;"));
        assert!(!html.contains("<b>room"));
    }

    #[test]
    fn message_ids_differ_per_recipient_and_are_stable() {
        let event = Uuid::new_v4();
        let booker = message_id(event, crate::store::BOOKER_KEY, "roombook.test");
        let admin = message_id(event, "admin:ops@example.com", "roombook.test");
        let other = message_id(event, "admin:boss@example.com", "roombook.test");
        assert_eq!(booker, format!("<{event}.booker@roombook.test>"));
        assert!(admin.starts_with(&format!("<{event}.admin-")));
        assert_ne!(admin, other);
        assert_eq!(
            admin,
            message_id(event, "admin:ops@example.com", "roombook.test")
        );
    }

    #[test]
    fn invitations_follow_the_booking() {
        let settings = MailSettings {
            from: "Roombook <roombook@localhost>".parse().unwrap(),
            time_zone: chrono_tz::UTC,
        };
        let cases = [
            (
                Kind::Booked,
                Role::Booker,
                Method::Request,
                EventStatus::Tentative,
            ),
            (
                Kind::Confirmed,
                Role::Booker,
                Method::Request,
                EventStatus::Confirmed,
            ),
            (
                Kind::Denied,
                Role::Booker,
                Method::Cancel,
                EventStatus::Cancelled,
            ),
            (
                Kind::Cancelled,
                Role::Booker,
                Method::Cancel,
                EventStatus::Cancelled,
            ),
            (
                Kind::Expired,
                Role::Booker,
                Method::Cancel,
                EventStatus::Cancelled,
            ),
            (
                Kind::ApprovalRequested,
                Role::Admin,
                Method::Publish,
                EventStatus::Tentative,
            ),
        ];
        for (kind, role, method, status) in cases {
            let i = invite(&facts(kind), role, "a@b.test", 0, Utc::now(), &settings);
            assert_eq!((i.method, i.status), (method, status), "{kind:?}");
            assert_eq!(i.uid, format!("{}@localhost", Uuid::nil()));
            assert_eq!(i.attendee.is_some(), role == Role::Booker);
        }
    }

    #[test]
    fn addresses_are_checked() {
        assert!(parse_address("alice@example.com").is_ok());
        assert!(parse_address("not an address").is_err());
        assert!(parse_address("").is_err());
    }
}
