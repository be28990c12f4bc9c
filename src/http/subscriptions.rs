//! The billers' API: their webhook subscriptions (the same endpoints table, validation and
//! SSRF guard as `tangazo webhooks`), secret rotation, a signed test, recent attempts.
//!
//! A biller sees only its own: another biller's subscription answers 404 exactly as one that
//! does not exist, so ids tell nothing across tenants.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::auth::Biller;
use super::body::Json;
use super::idempotency::idempotent;
use super::problem::{Answer, Problem};
use crate::channels::Endpoint;
use crate::channels::webhook::{configured_guard, send_test, sign};
use crate::domain::{EventType, Span};
use crate::storage::BillerEvent;
use crate::storage::{EndpointInfo, NewEndpoint};

/// The longest overlap of two secrets after a rotation.
const MAX_OVERLAP: i64 = 7 * 24 * 3600;
/// Attempts listed per subscription.
const ATTEMPTS_LISTED: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/subscriptions", get(list).post(create))
        .route("/v1/subscriptions/{id}", get(show).patch(update).delete(remove))
        .route("/v1/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/v1/subscriptions/{id}/test", post(test))
        .route("/v1/subscriptions/{id}/attempts", get(attempts))
        .route("/v1/subscriptions/{id}/replay", post(replay))
        .route("/v1/events", get(list_events))
}

/// Events listed per page at most, and replayed per request at most.
const EVENTS_MAX: i64 = 500;
const REPLAY_MAX: i64 = 100;

/// A subscription as its biller sees it (never its secret, except once on creation and
/// rotation).
#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    pub id: i64,
    pub url: String,
    /// Empty: every event type.
    pub events: Vec<String>,
    /// Empty: every component.
    pub components: Vec<String>,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Until when the previous secret also signs, after a rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<DateTime<Utc>>,
}

impl From<EndpointInfo> for SubscriptionView {
    fn from(e: EndpointInfo) -> SubscriptionView {
        SubscriptionView {
            id: e.id,
            url: e.url,
            events: e.events,
            components: e.components,
            enabled: e.disabled.is_none(),
            disabled_reason: e.disabled,
            previous_secret_until: e.previous_until,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    url: Option<String>,
    events: Option<Vec<String>>,
    components: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps signing, e.g. "24h" (at most 7 days).
    overlap: Option<String>,
}

fn events(list: &[String]) -> Answer<Vec<EventType>> {
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            e.parse::<EventType>()
                .map_err(|m| Problem::invalid(format!("/events/{i}"), m))
        })
        .collect()
}

async fn checked_url(state: &AppState, url: &str) -> Answer<String> {
    let guard = configured_guard(&state.config.senders).map_err(|e| Problem::internal(&std::io::Error::other(e)))?;
    match guard.check_url(url).await {
        Ok(u) => Ok(u.to_string()),
        Err(refused) => Err(Problem::invalid("/url", refused.to_string())),
    }
}

/// The caller's own subscription `id`, or 404 (another biller's, removed, or none).
async fn own(state: &AppState, biller: &Biller, id: &str) -> Answer<EndpointInfo> {
    let missing = || Problem::not_found(format!("no subscription has id '{}'", crate::domain::quote_prefix(id)));
    let id: i64 = id.parse().ok().filter(|i| *i > 0).ok_or_else(missing)?;
    match state.store.endpoint(id).await? {
        Some(e) if e.recipient == biller.recipient.0 && e.disabled.as_deref() != Some("removed") => Ok(e),
        _ => Err(missing()),
    }
}

async fn list(State(state): State<AppState>, biller: Biller) -> Answer<Response> {
    let list: Vec<SubscriptionView> = state
        .store
        .endpoints(Some(biller.recipient))
        .await?
        .into_iter()
        .filter(|e| e.disabled.as_deref() != Some("removed"))
        .map(SubscriptionView::from)
        .collect();
    Ok(axum::Json(json!({ "subscriptions": list })).into_response())
}

async fn create(
    State(state): State<AppState>,
    biller: Biller,
    headers: HeaderMap,
    body: Json<NewSubscription>,
) -> Answer<Response> {
    idempotent(
        &state,
        &biller.caller,
        &headers,
        "POST /v1/subscriptions",
        &body.raw,
        async {
            let new = &body.value;
            let events = events(&new.events)?;
            let components = state.known_components(&new.components)?;
            let url = checked_url(&state, &new.url).await?;
            let secret = sign::new_secret().map_err(|e| Problem::internal(&std::io::Error::other(e)))?;
            let id = state
                .store
                .add_endpoint(
                    &NewEndpoint {
                        recipient: biller.recipient,
                        url,
                        secret: secret.clone(),
                        events,
                        components,
                    },
                    state.clock.now(),
                )
                .await?;
            let info = state
                .store
                .endpoint(id)
                .await?
                .ok_or_else(|| Problem::not_found("the subscription was removed meanwhile"))?;
            let mut view = serde_json::to_value(SubscriptionView::from(info)).unwrap_or_default();
            view["secret"] = json!(secret.expose());
            Ok((StatusCode::CREATED, view))
        },
    )
    .await
}

async fn show(State(state): State<AppState>, biller: Biller, Path(id): Path<String>) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    Ok(axum::Json(SubscriptionView::from(e)).into_response())
}

async fn update(
    State(state): State<AppState>,
    biller: Biller,
    Path(id): Path<String>,
    body: Json<SubscriptionPatch>,
) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    let patch = &body.value;
    // Everything is checked before anything is written.
    let events = patch.events.as_deref().map(events).transpose()?;
    let components = patch
        .components
        .as_deref()
        .map(|c| state.known_components(c))
        .transpose()?;
    let url = match &patch.url {
        Some(u) => Some(checked_url(&state, u).await?),
        None => None,
    };
    state
        .store
        .update_endpoint(e.id, url.as_deref(), events.as_deref(), components.as_deref())
        .await?;
    match patch.enabled {
        Some(true) => {
            state.store.set_endpoint_disabled(e.id, None).await?;
        }
        Some(false) => {
            state
                .store
                .set_endpoint_disabled(e.id, Some("disabled by the biller"))
                .await?;
        }
        None => {}
    }
    let e = own(&state, &biller, &id).await?;
    Ok(axum::Json(SubscriptionView::from(e)).into_response())
}

async fn remove(State(state): State<AppState>, biller: Biller, Path(id): Path<String>) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    state.store.remove_endpoint(e.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rotate(
    State(state): State<AppState>,
    biller: Biller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    let request: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        super::body::parse(&body)?
    };
    let route = format!("POST /v1/subscriptions/{}/rotate-secret", e.id);
    idempotent(&state, &biller.caller, &headers, &route, &body, async {
        let overlap: Span = match &request.overlap {
            Some(text) => text
                .parse()
                .map_err(|m: crate::domain::TimeError| Problem::invalid("/overlap", m.to_string()))?,
            None => Span::from_secs(24 * 3600),
        };
        if overlap.secs() > MAX_OVERLAP {
            return Err(Problem::invalid("/overlap", "at most 7 days (168h)"));
        }
        let secret = sign::new_secret().map_err(|e| Problem::internal(&std::io::Error::other(e)))?;
        // Real time: the overlap is checked against the real clock when signing.
        let until = Utc::now() + overlap.delta();
        state.store.rotate_endpoint_secret(e.id, &secret, until).await?;
        Ok((
            StatusCode::OK,
            json!({ "id": e.id, "secret": secret.expose(), "previous_secret_until": until }),
        ))
    })
    .await
}

async fn test(
    State(state): State<AppState>,
    biller: Biller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    let route = format!("POST /v1/subscriptions/{}/test", e.id);
    idempotent(&state, &biller.caller, &headers, &route, b"", async {
        let Some((info, secret)) = state.store.endpoint_with_secret(e.id).await? else {
            return Err(Problem::not_found("the subscription was removed meanwhile"));
        };
        let guard =
            configured_guard(&state.config.senders).map_err(|e| Problem::internal(&std::io::Error::other(e)))?;
        let endpoint = Endpoint {
            id: info.id,
            url: info.url.clone(),
            secrets: vec![secret],
        };
        let started = std::time::Instant::now();
        let result = send_test(guard, endpoint, biller.recipient, state.clock.now()).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        Ok((
            StatusCode::OK,
            match result {
                Ok(_) => json!({ "delivered": true, "latency_ms": latency_ms }),
                Err(e) => json!({ "delivered": false, "latency_ms": latency_ms, "error": e.to_string() }),
            },
        ))
    })
    .await
}

async fn attempts(State(state): State<AppState>, biller: Biller, Path(id): Path<String>) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    let list: Vec<serde_json::Value> = state
        .store
        .endpoint_attempts(e.id, ATTEMPTS_LISTED)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "at": a.at,
                "outcome": a.outcome,
                "status": a.status,
                "latency_ms": a.latency_ms,
                "response": a.error,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "attempts": list })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The `id` of the last event already seen (the cursor).
    after: Option<i64>,
    limit: Option<i64>,
}

fn event_view(e: &BillerEvent) -> serde_json::Value {
    json!({
        "id": e.id,
        "webhook_id_prefix": e.key,
        "created_at": e.at,
        "type": e.payload["type"],
        "data": e.payload["data"],
    })
}

/// `GET /v1/events?after=CURSOR`: the caller's events in order, as they were sent.
async fn list_events(
    State(state): State<AppState>,
    biller: Biller,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let axum::extract::Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=EVENTS_MAX).contains(&limit) {
        return Err(Problem::invalid("/limit", format!("between 1 and {EVENTS_MAX}")));
    }
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(Problem::invalid("/after", "a cursor is an event id, 0 or more"));
    }
    let list = state.store.biller_events(biller.recipient, after, None, limit).await?;
    let next = list.last().map_or(after, |e| e.id);
    Ok(axum::Json(json!({
        "events": list.iter().map(event_view).collect::<Vec<_>>(),
        "next_after": next,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// RFC 3339: events created at or after this instant.
    since: Option<String>,
    /// Events after this cursor.
    after: Option<i64>,
}

/// Whether a subscription wants an event (its event types and components).
fn wants(e: &EndpointInfo, event: &BillerEvent) -> bool {
    let kind = event.payload["type"].as_str().unwrap_or_default();
    let components: Vec<&str> = event.payload["data"]["components"]
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    (e.events.is_empty() || e.events.iter().any(|t| t == kind))
        && (e.components.is_empty() || e.components.iter().any(|c| components.contains(&c.as_str())))
}

/// `POST /v1/subscriptions/{id}/replay?since=…`: sends the caller's events again to this
/// subscription, in order and under their first `webhook-id`, up to 100 a request; stops at
/// the first failure. `next_after` is where to continue.
async fn replay(
    State(state): State<AppState>,
    biller: Biller,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let e = own(&state, &biller, &id).await?;
    let axum::extract::Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let since = match &q.since {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|err| {
                    Problem::invalid(
                        "/since",
                        format!(
                            "'{}' is not an RFC 3339 instant: {err}",
                            crate::domain::quote_prefix(text)
                        ),
                    )
                })?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    if e.disabled.is_some() {
        return Err(Problem::conflict(
            "the subscription is disabled: enable it (PATCH {\"enabled\": true}) before replaying",
        ));
    }
    let Some((info, secret)) = state.store.endpoint_with_secret(e.id).await? else {
        return Err(Problem::not_found("the subscription was removed meanwhile"));
    };
    let page = state
        .store
        .biller_events(biller.recipient, q.after.unwrap_or(0).max(0), since, REPLAY_MAX)
        .await?;
    let last_seen = page.last().map(|ev| ev.id);
    let wanted: Vec<&BillerEvent> = page.iter().filter(|ev| wants(&info, ev)).collect();
    let guard = configured_guard(&state.config.senders).map_err(|e| Problem::internal(&std::io::Error::other(e)))?;
    let endpoint = Endpoint {
        id: info.id,
        url: info.url.clone(),
        secrets: vec![secret],
    };
    let events: Vec<(String, String, serde_json::Value)> = wanted
        .iter()
        .map(|ev| (ev.key.clone(), ev.kind.clone(), ev.payload.clone()))
        .collect();
    let route = format!(
        "POST /v1/subscriptions/{}/replay?since={:?}&after={:?}",
        e.id, q.since, q.after
    );
    idempotent(&state, &biller.caller, &headers, &route, b"", async {
        let (sent, error) = crate::channels::webhook::replay(guard, endpoint, biller.recipient, events)
            .await
            .map_err(|e| Problem::internal(&std::io::Error::other(e)))?;
        // Where to go on: after the last event sent, or after the whole page when all went.
        let next_after = match &error {
            Some(_) => wanted.get(sent).map(|ev| ev.id - 1),
            None => last_seen.filter(|_| page.len() as i64 == REPLAY_MAX),
        };
        Ok((
            StatusCode::OK,
            json!({
                "replayed": sent,
                "error": error.map(|e| e.to_string()),
                "next_after": next_after,
            }),
        ))
    })
    .await
}
