//! Times at the edge: parsing what clients send, and the UTC instants the databases store.
//!
//! Clients may send RFC 3339 (`2026-11-23T09:00:00+01:00`) or, like the original walkthrough,
//! `yyyyMMddHHmmss` (`20261123090000`, read as UTC). Databases store epoch milliseconds, which
//! compare as instants on SQLite and PostgreSQL alike.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

/// Parses an RFC 3339 or `yyyyMMddHHmmss` time into a UTC instant.
pub fn parse_client_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S") {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    Err(format!(
        "`{s}` is not a time: use RFC 3339 (2026-11-23T09:00:00Z) or yyyyMMddHHmmss (20261123090000)"
    ))
}

pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 in UTC with milliseconds, the one format the services answer with.
pub fn format_utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now, at the millisecond precision the databases and messages keep.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound as _;
    Utc::now().trunc_subsecs(3)
}

pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc3339_with_offset_as_the_same_instant() {
        let t = parse_client_time("2026-11-23T10:00:00+01:00").unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap());
    }

    #[test]
    fn accepts_the_compact_seed_format_as_utc() {
        let t = parse_client_time("20210708173000").unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2021, 7, 8, 17, 30, 0).unwrap());
    }

    #[test]
    fn rejects_truncated_and_impossible_times() {
        assert!(parse_client_time("2021070817300").is_err());
        assert!(parse_client_time("20211308173000").is_err());
        assert!(parse_client_time("tomorrow").is_err());
    }

    #[test]
    fn millis_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(from_millis(to_millis(t)), t);
    }
}
