//! The operator API (the admin token): windows — create, reschedule, extend, cancel, complete
//! — with optimistic concurrency (`expected_revision`), a window's delivery summary and its
//! failed deliveries, page by page. The same domain rules as the command line: a change is a
//! new revision, and everything still queued for the old one is superseded in the same
//! transaction.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::{Admin, Caller};
use super::body::Json;
use super::idempotency::idempotent;
use super::problem::{Answer, Problem};
use crate::domain::{
    ComponentId, DeliveryState, Localized, NewWindow, Schedule, Window, WindowError, WindowId, Zone, parse_instant,
};

/// Deliveries listed per page at most.
const PAGE_MAX: i64 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/windows", get(list).post(create))
        .route("/v1/admin/windows/{id}", get(show))
        .route("/v1/admin/windows/{id}/reschedule", post(reschedule))
        .route("/v1/admin/windows/{id}/extend", post(extend))
        .route("/v1/admin/windows/{id}/cancel", post(cancel))
        .route("/v1/admin/windows/{id}/complete", post(complete))
        .route("/v1/admin/windows/{id}/summary", get(summary))
        .route("/v1/admin/windows/{id}/deliveries", get(deliveries))
}

/// A window as the operator sees it.
fn view(w: &Window) -> serde_json::Value {
    json!({
        "id": w.id.0,
        "revision": w.revision,
        "status": w.status.as_str(),
        "last_change": w.last_change.as_str(),
        "title": w.title.en,
        "title_sw": w.title.sw,
        "description": w.description.en,
        "description_sw": w.description.sw,
        "components": w.components.iter().map(ComponentId::as_str).collect::<Vec<_>>(),
        "starts_at": w.schedule.starts_at(),
        "ends_at": w.schedule.ends_at(),
        "zone": w.zone.name(),
        "auto_complete": w.auto_complete,
        "cancel_reason": w.cancel_reason.as_ref().map(|r| &r.en),
        "cancel_reason_sw": w.cancel_reason.as_ref().and_then(|r| r.sw.as_ref()),
        "created_at": w.created_at,
        "revised_at": w.revised_at,
    })
}

/// A window error as a problem naming the field.
fn window_problem(e: WindowError) -> Problem {
    match &e {
        WindowError::EndNotAfterStart { .. } | WindowError::EndInPast { .. } => {
            Problem::invalid("/ends_at", e.to_string())
        }
        WindowError::StartInPast { .. } => Problem::invalid("/starts_at", e.to_string()),
        WindowError::MissingTitle => Problem::invalid("/title", e.to_string()),
        WindowError::Text { field, error } => Problem::invalid(
            format!("/{}", field.trim_start_matches("--").replace('-', "_")),
            error.to_string(),
        ),
        WindowError::NoComponents => Problem::invalid("/components", e.to_string()),
        WindowError::SwahiliOnly(field) => Problem::invalid(
            format!("/{}_sw", field.trim_start_matches("--").replace('-', "_")),
            e.to_string(),
        ),
        WindowError::NotAllowed { .. } | WindowError::NothingChanged(_) => Problem::conflict(e.to_string()),
        WindowError::Corrupt(_) => Problem::internal(&e),
    }
}

fn zone(text: Option<&str>, default: Zone) -> Answer<Zone> {
    match text {
        Some(t) => t
            .parse()
            .map_err(|e: crate::domain::TimeError| Problem::invalid("/zone", e.to_string())),
        None => Ok(default),
    }
}

fn instant(text: &str, zone: Zone, pointer: &str) -> Answer<DateTime<Utc>> {
    parse_instant(text, zone).map_err(|e| Problem::invalid(pointer, e.to_string()))
}

async fn window_of(state: &AppState, id: &str) -> Answer<Window> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i: &i64| *i > 0)
        .ok_or_else(|| Problem::not_found(format!("no window has id '{}'", crate::domain::quote_prefix(id))))?;
    Ok(state.store.window(WindowId(id)).await?)
}

async fn list(State(state): State<AppState>, _: Admin) -> Answer<Response> {
    let windows: Vec<serde_json::Value> = state.store.windows().await?.iter().map(view).collect();
    Ok(axum::Json(json!({ "windows": windows })).into_response())
}

async fn show(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Answer<Response> {
    Ok(axum::Json(view(&window_of(&state, &id).await?)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWindowRequest {
    title: String,
    title_sw: Option<String>,
    #[serde(default)]
    description: String,
    description_sw: Option<String>,
    components: Vec<String>,
    /// RFC 3339, or `YYYY-MM-DD HH:MM` in `zone`.
    starts_at: String,
    ends_at: String,
    /// The IANA zone it is announced in [default: the configured default zone].
    zone: Option<String>,
    #[serde(default)]
    auto_complete: bool,
}

fn components(state: &AppState, list: &[String]) -> Answer<Vec<ComponentId>> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let id: ComponentId = c.parse().map_err(|e: crate::domain::ComponentError| {
                Problem::invalid(format!("/components/{i}"), e.to_string())
            })?;
            if state.config.knows(&id) {
                Ok(id)
            } else {
                Err(Problem::invalid(
                    format!("/components/{i}"),
                    format!("unknown component '{id}'"),
                ))
            }
        })
        .collect()
}

async fn create(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    body: Json<NewWindowRequest>,
) -> Answer<Response> {
    idempotent(
        &state,
        &Caller::Admin,
        &headers,
        "POST /v1/admin/windows",
        &body.raw,
        async {
            let r = &body.value;
            let now = state.clock.now();
            let zone = zone(r.zone.as_deref(), state.config.default_zone)?;
            let schedule = Schedule::new(
                instant(&r.starts_at, zone, "/starts_at")?,
                instant(&r.ends_at, zone, "/ends_at")?,
            )
            .map_err(window_problem)?;
            let new = NewWindow {
                title: Localized {
                    en: r.title.clone(),
                    sw: r.title_sw.clone(),
                },
                description: Localized {
                    en: r.description.clone(),
                    sw: r.description_sw.clone(),
                },
                components: components(&state, &r.components)?,
                schedule,
                zone,
                auto_complete: r.auto_complete,
            }
            .validate(now)
            .map_err(window_problem)?;
            let w = state.store.create_window(new, now, "api:admin").await?;
            Ok((StatusCode::CREATED, view(&w)))
        },
    )
    .await
}

/// Saves the next revision, unless the window moved on since `expected_revision`.
async fn save(
    state: &AppState,
    before: &Window,
    expected: Option<u32>,
    after: Result<Window, WindowError>,
) -> Answer<Response> {
    if let Some(expected) = expected.filter(|e| *e != before.revision) {
        return Err(Problem::conflict(format!(
            "window {} is at revision {}, not {expected}; look again and retry",
            before.id, before.revision
        )));
    }
    let after = after.map_err(window_problem)?;
    let superseded = state
        .store
        .save_change(before, &after, "api:admin", state.clock.now())
        .await?;
    let mut v = view(&after);
    v["superseded_deliveries"] = json!(superseded);
    Ok(axum::Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescheduleRequest {
    starts_at: String,
    ends_at: String,
    zone: Option<String>,
    expected_revision: Option<u32>,
}

async fn reschedule(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: Json<RescheduleRequest>,
) -> Answer<Response> {
    let w = window_of(&state, &id).await?;
    let r = &body.value;
    let zone = zone(r.zone.as_deref(), w.zone)?;
    let schedule = Schedule::new(
        instant(&r.starts_at, zone, "/starts_at")?,
        instant(&r.ends_at, zone, "/ends_at")?,
    )
    .map_err(window_problem)?;
    let next = w.reschedule(schedule, state.clock.now());
    save(&state, &w, r.expected_revision, next).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    ends_at: String,
    zone: Option<String>,
    expected_revision: Option<u32>,
}

async fn extend(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: Json<ExtendRequest>,
) -> Answer<Response> {
    let w = window_of(&state, &id).await?;
    let r = &body.value;
    let zone = zone(r.zone.as_deref(), w.zone)?;
    let next = w.extend(instant(&r.ends_at, zone, "/ends_at")?, state.clock.now());
    save(&state, &w, r.expected_revision, next).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    reason: Option<String>,
    reason_sw: Option<String>,
    expected_revision: Option<u32>,
}

async fn cancel(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: Json<CancelRequest>,
) -> Answer<Response> {
    let w = window_of(&state, &id).await?;
    let r = &body.value;
    if r.reason.is_none() && r.reason_sw.is_some() {
        return Err(Problem::invalid(
            "/reason_sw",
            "a Swahili reason needs the English one beside it",
        ));
    }
    if let Some(text) = &r.reason {
        crate::domain::check_text(text, crate::domain::text_limits::REASON, true)
            .map_err(|e| Problem::invalid("/reason", e.to_string()))?;
    }
    if let Some(text) = &r.reason_sw {
        crate::domain::check_text(text, crate::domain::text_limits::REASON, true)
            .map_err(|e| Problem::invalid("/reason_sw", e.to_string()))?;
    }
    let reason = r.reason.clone().map(|en| Localized {
        en,
        sw: r.reason_sw.clone(),
    });
    let next = w.cancel(reason, state.clock.now());
    save(&state, &w, r.expected_revision, next).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    expected_revision: Option<u32>,
}

async fn complete(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let w = window_of(&state, &id).await?;
    let r: CompleteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteRequest::default()
    } else {
        super::body::parse(&body)?
    };
    let next = w.complete(state.clock.now());
    save(&state, &w, r.expected_revision, next).await
}

async fn summary(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Answer<Response> {
    let w = window_of(&state, &id).await?;
    let rows = state.store.summary(Some(w.id)).await?;
    let notices = state.store.notice_log(Some(w.id)).await?;
    Ok(
        axum::Json(json!({ "window": w.id.0, "revision": w.revision, "deliveries": rows, "notices": notices }))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// pending, claimed, sent, failed, expired, superseded [default: failed]
    state: Option<String>,
    /// The last id of the previous page.
    after: Option<i64>,
    limit: Option<i64>,
}

async fn deliveries(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let w = window_of(&state, &id).await?;
    let wanted: DeliveryState = q
        .state
        .as_deref()
        .unwrap_or("failed")
        .parse()
        .map_err(|e: String| Problem::invalid("/state", e))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::invalid("/limit", format!("between 1 and {PAGE_MAX}")));
    }
    let after = q.after.unwrap_or(0);
    let rows = state.store.deliveries(w.id, Some(wanted), Some((after, limit))).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(axum::Json(json!({ "deliveries": rows, "next_after": next })).into_response())
}
