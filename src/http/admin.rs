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
use crate::planner::pace::{Capacity, FanOutPlan, window_plan};
use crate::shutdown::CancellationToken;

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
        .route("/v1/admin/broadcasts", post(broadcast))
        .route("/v1/admin/broadcasts/{id}", get(broadcast_state))
        .route(
            "/v1/admin/recipients/import",
            post(import).layer(axum::extract::DefaultBodyLimit::max(IMPORT_LIMIT)),
        )
}

/// The largest CSV upload: about 21 million rows. It is streamed to a file, never held in
/// memory.
const IMPORT_LIMIT: usize = 4 << 30;

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
    let w = window_of(&state, &id).await?;
    let mut v = view(&w);
    v["plan"] = json!(plan(&state, &w).await?);
    Ok(axum::Json(v).into_response())
}

/// Every fan-out the window still owes, paced at 95 % of the configured rates (as `window show`).
async fn plan(state: &AppState, w: &Window) -> Answer<Vec<FanOutPlan>> {
    let sizes = state.store.all_audience_sizes().await?;
    let size_of = |a| sizes.get(&a).cloned().unwrap_or_default();
    let capacity = Capacity::of_first_backends(&state.config.first_backends());
    Ok(window_plan(
        w,
        &state.config.policy,
        &size_of,
        &capacity,
        state.clock.now(),
    ))
}

/// The fan-outs of a window just changed that the rates cannot finish by their deadlines.
async fn cannot_meet_deadline(state: &AppState, w: &Window) -> Answer<Vec<FanOutPlan>> {
    Ok(plan(state, w).await?.into_iter().filter(|p| !p.feasible()).collect())
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
                components: state.known_components(&r.components)?,
                schedule,
                zone,
                auto_complete: r.auto_complete,
            }
            .validate(now)
            .map_err(window_problem)?;
            let w = state.store.create_window(new, now, "api:admin").await?;
            let mut v = view(&w);
            v["cannot_meet_deadline"] = json!(cannot_meet_deadline(&state, &w).await?);
            Ok((StatusCode::CREATED, v))
        },
    )
    .await
}

/// Saves the next revision, unless the window moved on since `expected_revision`; the same
/// `Idempotency-Key` again answers the first answer and changes nothing.
async fn save(
    state: &AppState,
    headers: &HeaderMap,
    action: &str,
    body: &[u8],
    before: &Window,
    expected: Option<u32>,
    after: Result<Window, WindowError>,
) -> Answer<Response> {
    let route = format!("POST /v1/admin/windows/{}/{action}", before.id);
    idempotent(state, &Caller::Admin, headers, &route, body, async {
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
        v["cannot_meet_deadline"] = json!(cannot_meet_deadline(state, &after).await?);
        Ok((StatusCode::OK, v))
    })
    .await
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
    headers: HeaderMap,
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
    save(&state, &headers, "reschedule", &body.raw, &w, r.expected_revision, next).await
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
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Json<ExtendRequest>,
) -> Answer<Response> {
    let w = window_of(&state, &id).await?;
    let r = &body.value;
    let zone = zone(r.zone.as_deref(), w.zone)?;
    let next = w.extend(instant(&r.ends_at, zone, "/ends_at")?, state.clock.now());
    save(&state, &headers, "extend", &body.raw, &w, r.expected_revision, next).await
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
    headers: HeaderMap,
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
    save(&state, &headers, "cancel", &body.raw, &w, r.expected_revision, next).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    expected_revision: Option<u32>,
}

async fn complete(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
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
    save(&state, &headers, "complete", &body, &w, r.expected_revision, next).await
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Import nothing if any row is bad (422 with the report).
    #[serde(default)]
    strict: bool,
}

/// A file removed when dropped.
struct Spool(std::path::PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn import_problem(e: crate::import::ImportError) -> Problem {
    use crate::import::ImportError;
    match e {
        e @ (ImportError::Header(_) | ImportError::NotText(_)) => Problem::invalid("", e.to_string()),
        ImportError::Csv(e) => Problem::bad_request(format!("the CSV cannot be read: {e}")),
        ImportError::Store(e) => e.into(),
    }
}

/// `POST /v1/admin/recipients/import` (`Content-Type: text/csv`): the recipients CSV of
/// `tangazo recipients import`, streamed to a spool file and imported with the same
/// validation and report (bad rows by line, skipped; with `?strict=true` any bad row imports
/// nothing).
async fn import(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Answer<Response> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let csv = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"));
    if !csv {
        return Err(Problem::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the recipients CSV with `Content-Type: text/csv`",
        ));
    }
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let spool = Spool(std::env::temp_dir().join(format!(
        "tangazo-import-{}-{}.csv",
        std::process::id(),
        UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let mut file = tokio::fs::File::create(&spool.0)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let mut stream = body.into_data_stream();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if size + 1 >= IMPORT_LIMIT || format!("{e:?}").contains("LengthLimit") {
                Problem::status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the CSV is larger than {IMPORT_LIMIT} bytes"),
                )
            } else {
                Problem::bad_request(format!("the upload broke off: {e}"))
            }
        })?;
        size += chunk.len();
        file.write_all(&chunk).await.map_err(|e| Problem::internal(&e))?;
    }
    file.flush().await.map_err(|e| Problem::internal(&e))?;
    drop(file);
    let open = || {
        std::fs::File::open(&spool.0)
            .map(std::io::BufReader::new)
            .map_err(|e| Problem::internal(&e))
    };
    let rules = crate::import::RowRules {
        default_zone: state.config.default_zone,
        components: &state.config.components,
    };
    if q.strict {
        let report = crate::import::validate_csv(open()?, &rules).map_err(import_problem)?;
        if report.rejected > 0 {
            let mut problem = Problem::invalid("", format!("{} bad rows: nothing was imported", report.rejected));
            problem.errors = report
                .errors
                .iter()
                .map(|e| super::problem::FieldError {
                    pointer: format!("/line/{}", e.line),
                    detail: e.reason.clone(),
                })
                .collect();
            return Err(problem);
        }
    }
    let report = crate::import::import_csv(&state.store, open()?, &rules, state.clock.now(), &mut |_| {})
        .await
        .map_err(import_problem)?;
    tracing::info!(
        rows = report.rows,
        imported = report.imported,
        rejected = report.rejected,
        "recipients imported over HTTP"
    );
    Ok(axum::Json(report).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// A window's notice: its id and the notice (`rescheduled`, `reminder:24h`) …
    window_id: Option<i64>,
    notice: Option<String>,
    /// … or a free message, in English and optionally Swahili.
    message: Option<String>,
    message_sw: Option<String>,
    subject: Option<String>,
    subject_sw: Option<String>,
    /// customers, billers or all [default: all].
    audience: Option<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
    locale: Option<String>,
    /// Idempotent by name [default: derived from the content and the audience].
    name: Option<String>,
    /// A free message's deadline [default: broadcast.deadline from now].
    deadline: Option<String>,
    #[serde(default)]
    dry_run: bool,
    /// Needed above broadcast.confirm_above recipients.
    #[serde(default)]
    confirm: bool,
}

fn filter(state: &AppState, r: &BroadcastRequest) -> Answer<crate::domain::AudienceFilter> {
    let audiences = match r
        .audience
        .as_deref()
        .unwrap_or("all")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "all" => Vec::new(),
        other => vec![
            other
                .parse::<crate::domain::Audience>()
                .map_err(|e| Problem::invalid("/audience", e.to_string()))?,
        ],
    };
    let mut components = state.known_components(&r.components)?;
    components.sort();
    components.dedup();
    let mut channels = r
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<crate::domain::Channel>()
                .map_err(|e| Problem::invalid(format!("/channels/{i}"), e.to_string()))
        })
        .collect::<Answer<Vec<_>>>()?;
    channels.sort();
    channels.dedup();
    let locale = r
        .locale
        .as_deref()
        .map(str::parse::<crate::domain::Locale>)
        .transpose()
        .map_err(|e| Problem::invalid("/locale", e.to_string()))?;
    Ok(crate::domain::AudienceFilter {
        audiences,
        components,
        channels,
        locale,
        subset: None,
    })
}

async fn broadcast_content(
    state: &AppState,
    r: &BroadcastRequest,
    now: DateTime<Utc>,
) -> Answer<(crate::broadcast::Content, DateTime<Utc>)> {
    use crate::broadcast::Content;
    use crate::domain::{MessageText, Notice};
    match (r.window_id, &r.notice, &r.message) {
        (Some(id), Some(notice), None) => {
            let notice: Notice = notice
                .parse()
                .map_err(|e: crate::domain::NoticeError| Problem::invalid("/notice", e.to_string()))?;
            let window = window_of(state, &id.to_string()).await?;
            let deadline = crate::planner::notice_deadline(&window, notice.kind(), &state.config.policy)
                .map_err(|e| Problem::invalid("/notice", e.to_string()))?;
            Ok((
                Content::Notice {
                    window: Box::new(window),
                    notice,
                },
                deadline,
            ))
        }
        (None, None, Some(text)) => {
            let en = MessageText {
                text: text.clone(),
                subject: r.subject.clone(),
            };
            let sw = r.message_sw.clone().map(|text| MessageText {
                text,
                subject: r.subject_sw.clone(),
            });
            let message =
                crate::domain::Message::new(en, sw).map_err(|e| Problem::invalid("/message", e.to_string()))?;
            for locale in crate::domain::Locale::ALL {
                state
                    .renderer
                    .render_message(&message, "check", crate::domain::Channel::Sms, locale)
                    .map_err(|e| {
                        Problem::invalid(
                            if locale == crate::domain::Locale::Sw {
                                "/message_sw"
                            } else {
                                "/message"
                            },
                            e.to_string(),
                        )
                    })?;
            }
            let deadline = match &r.deadline {
                Some(t) => instant(t, state.config.default_zone, "/deadline")?,
                None => now + state.config.broadcast_deadline.delta(),
            };
            Ok((Content::Message(message), deadline))
        }
        _ => Err(Problem::invalid(
            "",
            "give either window_id and notice, or message (with message_sw and subject if you like)",
        )),
    }
}

/// `POST /v1/admin/broadcasts`: a window's notice or a free message to a filtered audience,
/// through the library's broadcast functions. A dry run records nothing and answers the
/// estimate; otherwise the broadcast is recorded, every row enqueued (idempotent by name), and
/// the daemon sends them (202).
async fn broadcast(State(state): State<AppState>, _: Admin, body: Json<BroadcastRequest>) -> Answer<Response> {
    let r = &body.value;
    let now = state.clock.now();
    let filter = filter(&state, r)?;
    let (content, deadline) = broadcast_content(&state, r, now).await?;
    if deadline <= now {
        return Err(Problem::invalid(
            "/deadline",
            format!("the deadline {deadline} has already passed"),
        ));
    }
    let name = match &r.name {
        Some(n) if n.trim().is_empty() || n.len() > 120 => {
            return Err(Problem::invalid("/name", "a name is 1 to 120 characters"));
        }
        Some(n) => n.trim().to_owned(),
        None => crate::broadcast::default_name(&content, &filter).map_err(|e| Problem::internal(&e))?,
    };
    let scan = crate::broadcast::scan(&state.store, &content, &filter).await?;
    if r.dry_run {
        let estimate = crate::broadcast::estimate(
            &content,
            &scan,
            &crate::broadcast::EstimateInputs {
                renderer: &state.renderer,
                components: &state.config.components,
                costs: &state.config.costs,
                rate: &|c| state.senders.rate(c),
                sample_zone: state.config.default_zone,
                now,
            },
        )
        .map_err(|e| Problem::invalid("", e.to_string()))?;
        return Ok(axum::Json(json!({
            "name": name,
            "dry_run": true,
            "recipients": scan.recipients,
            "messages": scan.total_messages(),
            "lines": estimate.lines,
            "sms_segments": estimate.sms_segments,
            "cost": {"currency": state.config.costs.currency, "total": (estimate.cost * 100.0).round() / 100.0},
            "seconds_total": estimate.seconds_total,
        }))
        .into_response());
    }
    if scan.recipients > state.config.confirm_above && !r.confirm {
        return Err(Problem::invalid(
            "/confirm",
            format!(
                "{} recipients is more than broadcast.confirm_above ({}): send \"confirm\": true to go ahead",
                scan.recipients, state.config.confirm_above
            ),
        ));
    }
    let new = content.to_new(name, filter, deadline);
    let recorded = state
        .store
        .create_broadcast(&new, now, "api:admin")
        .await
        .map_err(|e| match e {
            e @ crate::storage::StoreError::BroadcastNameTaken(_) => Problem::conflict(e.to_string()),
            e => e.into(),
        })?;
    // The daemon sends the rows; nothing here stops the recording once begun.
    let enqueued =
        crate::broadcast::enqueue_audience(&state.store, &content, &recorded, now, None, &CancellationToken::new())
            .await?
            .unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "id": recorded.id,
            "name": recorded.name,
            "recipients": scan.recipients,
            "enqueued": enqueued,
            "deadline": deadline,
        })),
    )
        .into_response())
}

/// `GET /v1/admin/broadcasts/{id}`: its deliveries by state.
async fn broadcast_state(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Answer<Response> {
    let missing = || Problem::not_found(format!("no broadcast has id '{}'", crate::domain::quote_prefix(&id)));
    let id: i64 = id.parse().ok().filter(|i: &i64| *i > 0).ok_or_else(missing)?;
    let recorded = match state.store.broadcast(id).await {
        Ok(b) => b,
        Err(crate::storage::StoreError::Corrupt(_)) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let states = crate::broadcast::states(&state.store, id).await?;
    Ok(axum::Json(json!({
        "id": recorded.id,
        "name": recorded.name,
        "deliveries": states.0,
        "open": states.open(),
        "settled": states.settled(),
    }))
    .into_response())
}
