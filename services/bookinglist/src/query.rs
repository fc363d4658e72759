//! What a caller may ask of the list, parsed once at the edge: filters, sort order and page.
//! Anything unknown or malformed is refused with the values that would have been accepted, so a
//! typo never silently widens or narrows a result.

use chrono::{DateTime, Utc};
use platform::{
    contract::{RoomId, SAGA_STATES},
    time::parse_client_time,
};
use serde_json::{json, Value};

use crate::projection::{BookingRow, BookingStatus, ConfirmStatus};

/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: u32 = 200;
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// Which rows to show. `user` is also how a non-admin is held to their own rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub user: Option<String>,
    pub room: Option<RoomId>,
    pub booking_status: Option<BookingStatus>,
    pub confirm_status: Option<ConfirmStatus>,
    /// Rows whose time slot overlaps `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    BookingDtm,
    UseStartDtm,
    UpdatedAt,
    RoomId,
}

impl SortKey {
    pub const ALL: [SortKey; 4] = [
        SortKey::BookingDtm,
        SortKey::UseStartDtm,
        SortKey::UpdatedAt,
        SortKey::RoomId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::BookingDtm => "bookingDtm",
            SortKey::UseStartDtm => "useStartDtm",
            SortKey::UpdatedAt => "updatedAt",
            SortKey::RoomId => "roomId",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            SortKey::BookingDtm => "booking_ms",
            SortKey::UseStartDtm => "start_ms",
            SortKey::UpdatedAt => "updated_ms",
            SortKey::RoomId => "room_id",
        }
    }
}

/// `sort=useStartDtm` ascending, `sort=-useStartDtm` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Default for Sort {
    /// Newest bookings first.
    fn default() -> Self {
        Sort {
            key: SortKey::BookingDtm,
            descending: true,
        }
    }
}

impl Sort {
    pub fn as_string(self) -> String {
        format!(
            "{}{}",
            if self.descending { "-" } else { "" },
            self.key.as_str()
        )
    }

    fn allowed() -> Vec<String> {
        SortKey::ALL
            .iter()
            .flat_map(|k| [k.as_str().to_string(), format!("-{}", k.as_str())])
            .collect()
    }
}

/// Page `number` (from 1) of `size` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub number: u32,
    pub size: u32,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            number: 1,
            size: DEFAULT_PAGE_SIZE,
        }
    }
}

impl Page {
    pub fn offset(self) -> i64 {
        i64::from(self.number - 1) * i64::from(self.size)
    }
}

/// A request for the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: Filter,
    pub sort: Sort,
    pub page: Page,
}

/// A parameter that cannot be accepted, and what would have been.
#[derive(Debug, Clone, PartialEq)]
pub struct BadParameter {
    pub parameter: String,
    pub detail: String,
    /// The accepted values (a list, or a description of a range).
    pub allowed: Value,
}

impl BadParameter {
    fn new(parameter: &str, detail: String, allowed: Value) -> Self {
        BadParameter {
            parameter: parameter.to_string(),
            detail,
            allowed,
        }
    }
}

pub const LIST_PARAMETERS: [&str; 9] = [
    "bookingUserId",
    "roomId",
    "bookingStatus",
    "confirmStatus",
    "from",
    "to",
    "sort",
    "page",
    "size",
];

pub const FEED_PARAMETERS: [&str; 3] = ["bookingUserId", "roomId", "sagaState"];

impl ListQuery {
    /// Parses the query string's pairs.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, BadParameter> {
        check_names(pairs, &LIST_PARAMETERS)?;
        let mut q = ListQuery::default();
        for (name, value) in pairs {
            match name.as_str() {
                "bookingUserId" => q.filter.user = Some(user(value)?),
                "roomId" => q.filter.room = Some(room(value)?),
                "bookingStatus" => {
                    q.filter.booking_status =
                        Some(BookingStatus::parse(value).ok_or_else(|| {
                            one_of(
                                name,
                                value,
                                BookingStatus::ALL.iter().map(|s| s.as_str()).collect(),
                            )
                        })?);
                }
                "confirmStatus" => {
                    q.filter.confirm_status =
                        Some(ConfirmStatus::parse(value).ok_or_else(|| {
                            one_of(
                                name,
                                value,
                                ConfirmStatus::ALL.iter().map(|s| s.as_str()).collect(),
                            )
                        })?);
                }
                "from" => q.filter.from = Some(time(name, value)?),
                "to" => q.filter.to = Some(time(name, value)?),
                "sort" => {
                    let (descending, key) = match value.strip_prefix('-') {
                        Some(k) => (true, k),
                        None => (false, value.as_str()),
                    };
                    let key = SortKey::ALL
                        .into_iter()
                        .find(|k| k.as_str() == key)
                        .ok_or_else(|| {
                            BadParameter::new(
                                name,
                                format!("sort `{value}` is not a sort order"),
                                json!(Sort::allowed()),
                            )
                        })?;
                    q.sort = Sort { key, descending };
                }
                "page" => {
                    q.page.number = number(name, value, 1, u32::MAX)?;
                }
                "size" => {
                    q.page.size = number(name, value, 1, MAX_PAGE_SIZE)?;
                }
                _ => unreachable!("names were checked"),
            }
        }
        if let (Some(from), Some(to)) = (q.filter.from, q.filter.to) {
            if to <= from {
                return Err(BadParameter::new(
                    "to",
                    "`to` must be after `from`".into(),
                    json!("a time after `from`"),
                ));
            }
        }
        Ok(q)
    }
}

/// Filters of the live feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    pub user: Option<String>,
    pub room: Option<RoomId>,
    /// Rows whose saga is in one of these states (any state when empty): e.g. a dashboard of
    /// requests awaiting approval, or a client that only needs to see sagas settle.
    pub saga_states: Vec<&'static str>,
}

impl FeedFilter {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, BadParameter> {
        check_names(pairs, &FEED_PARAMETERS)?;
        let mut f = FeedFilter::default();
        for (name, value) in pairs {
            match name.as_str() {
                "bookingUserId" => f.user = Some(user(value)?),
                "roomId" => f.room = Some(room(value)?),
                "sagaState" => f.saga_states = saga_states(value)?,
                _ => unreachable!("names were checked"),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, row: &BookingRow) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| row.booking_user_id.as_deref() == Some(u))
            && self.room.is_none_or(|r| row.room_id == Some(r))
            && (self.saga_states.is_empty()
                || row
                    .saga_state
                    .as_deref()
                    .is_some_and(|s| self.saga_states.contains(&s)))
    }
}

/// `sagaState=AWAITING_APPROVAL,COMPLETED`: one or more saga states, comma-separated.
fn saga_states(value: &str) -> Result<Vec<&'static str>, BadParameter> {
    let mut states = Vec::new();
    for part in value.split(',').map(str::trim) {
        let state = SAGA_STATES
            .into_iter()
            .find(|s| *s == part)
            .ok_or_else(|| one_of("sagaState", part, SAGA_STATES.to_vec()))?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

/// Unknown and repeated parameters are refused: both are mistakes that would otherwise pass
/// unnoticed.
fn check_names(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), BadParameter> {
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            return Err(BadParameter::new(
                name,
                format!("unknown parameter `{name}`"),
                json!(allowed),
            ));
        }
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(BadParameter::new(
                name,
                format!("parameter `{name}` is given more than once"),
                json!(allowed),
            ));
        }
    }
    Ok(())
}

fn one_of(name: &str, value: &str, allowed: Vec<&str>) -> BadParameter {
    BadParameter::new(
        name,
        format!("{name} `{value}` is not one of {}", allowed.join(", ")),
        json!(allowed),
    )
}

fn user(value: &str) -> Result<String, BadParameter> {
    let v = value.trim();
    if v.is_empty() || v.len() > 200 {
        return Err(BadParameter::new(
            "bookingUserId",
            "bookingUserId must be 1 to 200 characters".into(),
            json!("a user id"),
        ));
    }
    Ok(v.to_string())
}

fn room(value: &str) -> Result<RoomId, BadParameter> {
    value.trim().parse().map_err(|_| {
        BadParameter::new(
            "roomId",
            format!("roomId `{value}` is not a room number"),
            json!("a room number, e.g. 101"),
        )
    })
}

fn time(name: &str, value: &str) -> Result<DateTime<Utc>, BadParameter> {
    parse_client_time(value).map_err(|e| {
        BadParameter::new(
            name,
            format!("{name}: {e}"),
            json!("RFC 3339 (2026-11-23T09:00:00Z) or yyyyMMddHHmmss (20261123090000)"),
        )
    })
}

fn number(name: &str, value: &str, min: u32, max: u32) -> Result<u32, BadParameter> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            BadParameter::new(
                name,
                format!("{name} `{value}` must be a whole number from {min} to {max}"),
                json!({"min": min, "max": max}),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_newest_first_page_one_of_twenty() {
        let q = ListQuery::parse(&[]).unwrap();
        assert_eq!(q.sort.as_string(), "-bookingDtm");
        assert_eq!(
            q.page,
            Page {
                number: 1,
                size: 20
            }
        );
        assert_eq!(q.filter, Filter::default());
    }

    #[test]
    fn every_filter_parses() {
        let q = ListQuery::parse(&pairs(&[
            ("bookingUserId", "alice"),
            ("roomId", "101"),
            ("bookingStatus", "CANCELLED"),
            ("confirmStatus", "DENIED"),
            ("from", "20260101000000"),
            ("to", "2026-01-02T00:00:00Z"),
            ("sort", "-useStartDtm"),
            ("page", "3"),
            ("size", "50"),
        ]))
        .unwrap();
        assert_eq!(q.filter.user.as_deref(), Some("alice"));
        assert_eq!(q.filter.room, Some(101));
        assert_eq!(q.filter.booking_status, Some(BookingStatus::Cancelled));
        assert_eq!(q.filter.confirm_status, Some(ConfirmStatus::Denied));
        assert!(q.filter.from.unwrap() < q.filter.to.unwrap());
        assert_eq!(
            q.sort,
            Sort {
                key: SortKey::UseStartDtm,
                descending: true
            }
        );
        assert_eq!(q.page.offset(), 100);
    }

    #[test]
    fn an_unknown_status_is_refused_with_the_allowed_values() {
        let e = ListQuery::parse(&pairs(&[("bookingStatus", "DONE")])).unwrap_err();
        assert_eq!(e.parameter, "bookingStatus");
        assert_eq!(e.allowed, json!(["BOOKED", "CONFIRMED", "CANCELLED"]));
        let e = ListQuery::parse(&pairs(&[("confirmStatus", "booked")])).unwrap_err();
        assert_eq!(e.allowed, json!(["BOOKED", "CONFIRMED", "DENIED"]));
    }

    #[test]
    fn malformed_paging_and_unknown_or_repeated_parameters_are_refused() {
        for bad in [
            vec![("size", "0")],
            vec![("size", "201")],
            vec![("page", "0")],
            vec![("page", "two")],
            vec![("sort", "price")],
            vec![("status", "BOOKED")],
            vec![("roomId", "1"), ("roomId", "2")],
            vec![
                ("from", "2026-01-02T00:00:00Z"),
                ("to", "2026-01-01T00:00:00Z"),
            ],
        ] {
            assert!(ListQuery::parse(&pairs(&bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_feed_filter_matches_by_user_room_and_saga_state() {
        let row = |user: &str, room: Option<RoomId>, saga: Option<&str>| BookingRow {
            booking_user_id: Some(user.into()),
            room_id: room,
            saga_state: saga.map(str::to_string),
            ..BookingRow::empty(uuid::Uuid::nil())
        };
        let f = FeedFilter::parse(&pairs(&[("roomId", "101")])).unwrap();
        assert!(f.matches(&row("x", Some(101), None)));
        assert!(!f.matches(&row("x", Some(102), None)));
        assert!(!f.matches(&row("x", None, None)));

        let f = FeedFilter::parse(&pairs(&[
            ("sagaState", "AWAITING_APPROVAL, COMPLETED"),
            ("bookingUserId", "x"),
        ]))
        .unwrap();
        assert_eq!(f.saga_states, ["AWAITING_APPROVAL", "COMPLETED"]);
        assert!(f.matches(&row("x", Some(101), Some("COMPLETED"))));
        assert!(f.matches(&row("x", Some(101), Some("AWAITING_APPROVAL"))));
        assert!(!f.matches(&row("x", Some(101), Some("STARTED"))));
        assert!(!f.matches(&row("x", Some(101), None)), "no saga state yet");
        assert!(!f.matches(&row("y", Some(101), Some("COMPLETED"))));
    }

    #[test]
    fn the_feed_refuses_unknown_parameters_and_saga_states() {
        assert!(FeedFilter::parse(&pairs(&[("bookingStatus", "BOOKED")])).is_err());
        for bad in ["DONE", "completed", "", "COMPLETED,"] {
            let err = FeedFilter::parse(&pairs(&[("sagaState", bad)])).unwrap_err();
            assert_eq!(err.parameter, "sagaState", "{bad:?}");
            assert_eq!(err.allowed, json!(SAGA_STATES), "{bad:?}");
        }
    }
}
