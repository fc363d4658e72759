//! The iCalendar (RFC 5545 / iTIP RFC 5546) invitation attached to each mail.
//!
//! One event per booking, always with the same `UID`, so a calendar updates the entry it has:
//! `METHOD:REQUEST` + `STATUS:TENTATIVE` when booked, `METHOD:REQUEST` + `STATUS:CONFIRMED`
//! when approved, `METHOD:CANCEL` + `STATUS:CANCELLED` when denied, cancelled or expired.
//! `SEQUENCE` grows with the booking's event version, so a calendar applies them in order.
//! The admins' copy of an approval request is `METHOD:PUBLISH` (for information: admins are
//! not attendees and get no later updates, so nothing should land in their calendars unasked).
//!
//! Written by hand rather than with an iCalendar crate: we emit one fixed shape of VEVENT, and
//! the maintained crate needs a newer Rust than this workspace's minimum. The tests check the
//! output with that crate's parser.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Request,
    Cancel,
    Publish,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Request => "REQUEST",
            Method::Cancel => "CANCEL",
            Method::Publish => "PUBLISH",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Tentative,
    Confirmed,
    Cancelled,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Tentative => "TENTATIVE",
            EventStatus::Confirmed => "CONFIRMED",
            EventStatus::Cancelled => "CANCELLED",
        }
    }
}

/// A person in the invitation.
#[derive(Debug, Clone)]
pub struct Person {
    pub name: Option<String>,
    pub email: String,
}

#[derive(Debug, Clone)]
pub struct Invite {
    pub method: Method,
    pub uid: String,
    pub sequence: i64,
    /// When this version of the event was made (the event's `occurredAt`).
    pub stamp: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub summary: String,
    pub location: String,
    pub description: String,
    pub status: EventStatus,
    pub organizer: Person,
    pub attendee: Option<Person>,
}

impl Invite {
    /// The calendar object, with CRLF line ends and lines folded at 75 octets.
    pub fn to_ics(&self) -> String {
        let mut lines = vec![
            "BEGIN:VCALENDAR".to_string(),
            "VERSION:2.0".to_string(),
            "PRODID:-//Roombook//Notification//EN".to_string(),
            "CALSCALE:GREGORIAN".to_string(),
            format!("METHOD:{}", self.method.as_str()),
            "BEGIN:VEVENT".to_string(),
            format!("UID:{}", text(&self.uid)),
            format!("SEQUENCE:{}", self.sequence.max(0)),
            format!("DTSTAMP:{}", utc(self.stamp)),
            format!("DTSTART:{}", utc(self.start)),
            format!("DTEND:{}", utc(self.end)),
            format!("SUMMARY:{}", text(&self.summary)),
            format!("LOCATION:{}", text(&self.location)),
            format!("DESCRIPTION:{}", text(&self.description)),
            format!("STATUS:{}", self.status.as_str()),
            "TRANSP:OPAQUE".to_string(),
            format!("ORGANIZER{}", person(&self.organizer, "")),
        ];
        if let Some(attendee) = &self.attendee {
            lines.push(format!(
                "ATTENDEE{}",
                person(
                    attendee,
                    ";CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;RSVP=FALSE"
                )
            ));
        }
        lines.push("END:VEVENT".to_string());
        lines.push("END:VCALENDAR".to_string());
        let mut out = String::new();
        for line in lines {
            fold(&line, &mut out);
        }
        out
    }
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// `;CN="name"<params>:mailto:address`.
fn person(p: &Person, params: &str) -> String {
    let cn = p
        .name
        .as_deref()
        .map(|n| {
            // A quoted parameter value may hold anything but quotes and control characters.
            let clean: String = n.chars().filter(|c| *c != '"' && !c.is_control()).collect();
            format!(";CN=\"{clean}\"")
        })
        .unwrap_or_default();
    format!("{cn}{params}:mailto:{}", p.email)
}

/// Escapes a TEXT value (RFC 5545 §3.3.11).
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Appends `line` folded to lines of at most 75 octets (RFC 5545 §3.1), never inside a UTF-8
/// character; continuation lines start with one space.
fn fold(line: &str, out: &mut String) {
    let mut width = 0;
    for c in line.chars() {
        let len = c.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn invite() -> Invite {
        Invite {
            method: Method::Request,
            uid: "b1@roombook".into(),
            sequence: 1,
            stamp: Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap(),
            start: Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap(),
            summary: "Room 102".into(),
            location: "Room 102".into(),
            description: "Reason: budget; ask Bob, or Ann\nThanks".into(),
            status: EventStatus::Confirmed,
            organizer: Person {
                name: Some("Roombook".into()),
                email: "roombook@localhost".into(),
            },
            attendee: Some(Person {
                name: Some("alice \"al\"".into()),
                email: "alice@example.com".into(),
            }),
        }
    }

    #[test]
    fn writes_utc_times_and_escapes_text() {
        let ics = invite().to_ics();
        assert!(ics.contains("METHOD:REQUEST\r\n"));
        assert!(ics.contains("DTSTART:20261124T090000Z\r\n"));
        assert!(ics.contains("STATUS:CONFIRMED\r\n"));
        assert!(ics.contains("SEQUENCE:1\r\n"));
        let unfolded = ics.replace("\r\n ", "");
        assert!(unfolded.contains("DESCRIPTION:Reason: budget\\; ask Bob\\, or Ann\\nThanks\r\n"));
        assert!(unfolded.contains("ATTENDEE;CN=\"alice al\";CUTYPE"));
        assert!(ics.ends_with("END:VCALENDAR\r\n"));
    }

    #[test]
    fn folds_long_lines_at_75_octets_without_splitting_characters() {
        let mut i = invite();
        i.description = "é".repeat(100);
        let ics = i.to_ics();
        for line in ics.split("\r\n") {
            assert!(line.len() <= 75, "{line:?} is {} octets", line.len());
        }
        let unfolded = ics.replace("\r\n ", "");
        assert!(unfolded.contains(&format!("DESCRIPTION:{}\r\n", "é".repeat(100))));
    }
}
