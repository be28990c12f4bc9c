//! `Idempotency-Key` on POSTs: the first answer (2xx) to a key is kept at least a day per
//! caller; the same key with the same request gets that answer again and changes nothing; the
//! same key with another request is refused (422).

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::TimeDelta;
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::Caller;
use super::problem::{Answer, Problem};
use crate::storage::StoredAnswer;

/// How long an answer is kept.
const KEPT: TimeDelta = TimeDelta::hours(24);

/// Runs `work` unless the key was seen; answers as JSON.
pub async fn idempotent(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    work: impl Future<Output = Answer<(StatusCode, serde_json::Value)>>,
) -> Answer<Response> {
    let Some(value) = headers.get("idempotency-key") else {
        let (status, json) = work.await?;
        return Ok((status, axum::Json(json)).into_response());
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Problem::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters"))?;
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let request_hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let now = state.clock.now();
    let who = caller.key();
    if let Some(kept) = state.store.idempotent_answer(&who, key, now - KEPT).await? {
        if kept.request_hash != request_hash {
            return Err(Problem::invalid(
                "",
                "this Idempotency-Key was used for a different request; use a new key",
            ));
        }
        let status = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], kept.body).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    let (status, json) = work.await?;
    let answer = StoredAnswer {
        request_hash,
        status: status.as_u16(),
        body: json.to_string(),
    };
    state.store.keep_answer(&who, key, &answer, now, now - KEPT).await?;
    Ok((status, axum::Json(json)).into_response())
}
