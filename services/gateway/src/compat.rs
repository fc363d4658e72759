//! The original clients' way of deciding: `POST /confirms {bookingId, status}`.
//!
//! Here an approval request is opened by the saga when a booking is made and decided with
//! `PATCH /confirms/{id}`. The original clients name the booking instead and POST, so the
//! gateway (admin only, like every `/confirms` call) looks up that booking's request on the
//! confirm service and then:
//!
//! - `status: BOOKED` creates nothing (the saga already did): it answers the request as it
//!   stands, 200 — the original "is the approval request registered?" check;
//! - `status: CONFIRMED | DENIED` (with an optional `reason`) decides it exactly as
//!   `PATCH /confirms/{id}` would, with the same answers (200, 409 closed or decided otherwise);
//! - a booking without a request (unknown, or made a moment ago) is 404.
//!
//! Other fields the original clients send (`bookingUserId`, `userId`) are ignored: who decides is
//! the caller of the token.

use axum::{
    body::Bytes,
    http::{header, HeaderMap, HeaderValue, Method},
    response::{IntoResponse, Response},
};
use platform::http::Problem;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    config::Service,
    proxy::{AnswerBody, Proxy, ProxyError},
};

pub(crate) fn is_decision_by_booking(method: &Method, path: &str) -> bool {
    method == Method::POST && path == "/confirms"
}

/// The body of `POST /confirms`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DecisionByBooking)]
pub struct DecisionByBooking {
    /// The booking whose approval request is meant (its id, as `POST /bookings` answered).
    #[schema(value_type = String, format = Uuid)]
    booking_id: Value,
    /// `BOOKED` (look it up), `CONFIRMED` (approve) or `DENIED` (deny).
    #[schema(example = "DENIED")]
    status: String,
    /// Why, shown to the booker (at most 1000 characters).
    reason: Option<String>,
}

/// Decides (or shows) a booking's approval request, named by booking id.
#[utoipa::path(
    post, operation_id = "decideConfirmByBooking",
    path = "/confirms",
    tag = "confirms",
    request_body = DecisionByBooking,
    responses(
        (status = 200, description = "The approval request: as it stands for `BOOKED`, as decided for `CONFIRMED` / `DENIED`", body = ref("#/components/schemas/Confirm")),
        (status = 400, description = "`bookingId` is not a booking id, or `status` is not BOOKED, CONFIRMED or DENIED"),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "The booking has no approval request (unknown, or made a moment ago: try again)"),
        (status = 409, description = "The request is closed (booking cancelled) or was decided otherwise"),
    ),
)]
#[allow(dead_code)] // Documentation of what `decide_by_booking` serves.
fn post_confirms() {}

pub(crate) async fn decide_by_booking(
    proxy: &Proxy,
    base: &Url,
    headers: HeaderMap,
    body: &Bytes,
) -> Result<Response, ProxyError> {
    let request: DecisionByBooking = serde_json::from_slice(body).map_err(|e| {
        ProxyError::BadRequest(format!(
            "the body must be {{\"bookingId\": \"…\", \"status\": \"BOOKED|CONFIRMED|DENIED\"}}: {e}"
        ))
    })?;
    let booking_id = match &request.booking_id {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    let booking_id = uuid_like(&booking_id).ok_or_else(|| {
        ProxyError::BadRequest(format!(
            "bookingId `{booking_id}` is not a booking id (the id POST /bookings answered)"
        ))
    })?;
    if !matches!(request.status.as_str(), "BOOKED" | "CONFIRMED" | "DENIED") {
        return Err(ProxyError::BadRequest(format!(
            "status `{}` must be BOOKED, CONFIRMED or DENIED",
            request.status
        )));
    }

    let base = base.as_str().trim_end_matches('/');
    let lookup = proxy
        .call(
            Service::Confirm,
            proxy
                .client()
                .get(format!(
                    "{base}/confirms?bookingId={booking_id}&includeClosed=true"
                ))
                .headers(headers.clone()),
        )
        .await?;
    let AnswerBody::Full(found) = &lookup.body else {
        return Ok(lookup.into_response());
    };
    if !lookup.status.is_success() {
        return Ok(lookup.into_response());
    }
    let confirm = serde_json::from_slice::<Vec<Value>>(found)
        .ok()
        .and_then(|list| list.into_iter().next());
    let Some(confirm) = confirm else {
        return Ok(Problem::not_found(format!(
            "booking {booking_id} has no approval request; a new booking gets one within moments"
        ))
        .into_response());
    };
    if request.status == "BOOKED" {
        return Ok(axum::Json(confirm).into_response());
    }
    let Some(confirm_id) = confirm["id"].as_str().and_then(uuid_like) else {
        return Err(ProxyError::Unexpected(anyhow::anyhow!(
            "the confirm service listed an approval request without an id"
        )));
    };
    let mut decision = json!({ "status": request.status });
    if let Some(reason) = request.reason {
        decision["reason"] = json!(reason);
    }
    let mut headers = headers;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let answer = proxy
        .call(
            Service::Confirm,
            proxy
                .client()
                .patch(format!("{base}/confirms/{confirm_id}"))
                .headers(headers)
                .body(decision.to_string()),
        )
        .await?;
    Ok(answer.into_response())
}

/// `s` if it is a UUID in its usual hyphenated form (then safe to put in a URL as it is).
fn uuid_like(s: &str) -> Option<String> {
    let hex_groups: Vec<&str> = s.split('-').collect();
    let shape_ok = hex_groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && hex_groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    shape_ok.then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyphenated_uuids_are_booking_ids() {
        assert_eq!(
            uuid_like("96CCEFB4-6f1e-4172-b7f3-b8709fb7fab0").as_deref(),
            Some("96ccefb4-6f1e-4172-b7f3-b8709fb7fab0")
        );
        assert_eq!(uuid_like("1"), None);
        assert_eq!(uuid_like("96ccefb4-6f1e-4172-b7f3-b8709fb7fab0&x=1"), None);
        assert_eq!(uuid_like("zzccefb4-6f1e-4172-b7f3-b8709fb7fab0"), None);
    }

    #[test]
    fn only_a_post_to_the_collection_is_a_decision_by_booking() {
        assert!(is_decision_by_booking(&Method::POST, "/confirms"));
        assert!(!is_decision_by_booking(&Method::POST, "/confirms/x"));
        assert!(!is_decision_by_booking(&Method::GET, "/confirms"));
    }
}
