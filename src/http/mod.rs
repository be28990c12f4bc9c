//! The HTTP side: the billers' self-service API, the operator API, the public status page and
//! feeds, providers' callbacks (delivery reports, SMS replies), one-click unsubscribe, health,
//! readiness and metrics.
//!
//! `tangazo serve` runs it alone; `tangazo daemon` beside the scheduler, on the same store and
//! the same stop token. Handlers parse every input into domain types at the edge and answer
//! bad input with an RFC 9457 problem (4xx, never 5xx). Depends on `storage`, `domain`,
//! `render` and `channels` (the webhook guard and signer); prints nothing.
//!
//! Nothing secret is logged: the request log names the matched route (`/unsubscribe/{token}`),
//! never the path itself, and no header.

mod admin;
mod auth;
mod body;
mod callbacks;
mod feeds;
mod idempotency;
mod metrics;
mod problem;
mod public;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::Config;
use crate::shutdown::CancellationToken;
use crate::storage::Store;

pub use auth::{NewToken, new_token_secret, token_text};
pub use callbacks::{callback_path_secret, twilio_signature, unsubscribe_token};
pub use problem::{FieldError, Problem};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Store,
    pub clock: Clock,
    pub config: Config,
    /// The checked templates and the senders: for broadcasts' checks and estimates.
    pub renderer: Arc<crate::render::Renderer>,
    pub senders: crate::channels::Senders,
    limiter: auth::Limiter,
    keys: crate::domain::SigningKey,
    /// The address bound, for links when no other is configured.
    local: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}

impl AppState {
    /// The state for a server on `store`, reading time from `clock`, with the checked
    /// templates and senders. Makes the deployment's own keys on first use.
    pub async fn new(
        store: Store,
        clock: Clock,
        config: Config,
        renderer: Arc<crate::render::Renderer>,
        senders: crate::channels::Senders,
    ) -> Result<AppState, ServeError> {
        let keys = store.signing_key().await?;
        Ok(AppState(Arc::new(Shared {
            store,
            clock,
            config,
            renderer,
            senders,
            limiter: auth::Limiter::default(),
            keys,
            local: None,
        })))
    }

    /// A request's list of components (`/components/{i}` at fault), each configured.
    fn known_components(&self, list: &[String]) -> Result<Vec<crate::domain::ComponentId>, Problem> {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                let id: crate::domain::ComponentId = c.parse().map_err(|e: crate::domain::ComponentError| {
                    Problem::invalid(format!("/components/{i}"), e.to_string())
                })?;
                if self.config.knows(&id) {
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

    /// The base of links handed out: `http.public_url`, else `http://{listen}`.
    fn public_base(&self) -> String {
        match (&self.config.http.public_url, self.local.or(self.config.http.listen)) {
            (Some(url), _) => url.as_str().trim_end_matches('/').to_owned(),
            (None, Some(addr)) => format!("http://{addr}"),
            (None, None) => "http://localhost".to_owned(),
        }
    }
}

/// Every route.
pub fn router(state: AppState) -> Router {
    let limit = state.config.http.body_limit;
    Router::new()
        .route("/", get(public::status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/windows", get(public::windows))
        .route("/v1/windows/{id}", get(public::window))
        .route("/calendar.ics", get(feeds::calendar))
        .route("/feed.atom", get(feeds::atom))
        .merge(subscriptions::routes())
        .merge(admin::routes())
        .merge(callbacks::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem::not_found("no such resource (see /openapi.json)")
}

async fn method_not_allowed() -> Problem {
    Problem::status(
        StatusCode::METHOD_NOT_ALLOWED,
        "this resource does not take that method",
    )
}

/// The OpenAPI 3.1 description of every route (`src/http/openapi.json`, checked against the
/// router by a test).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers and its migrations are the ones this build knows.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.migrations_current().await {
        Ok(true) => "ready\n".into_response(),
        Ok(false) => {
            Problem::unavailable("the database's migrations are not the ones this build expects").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %crate::domain::error_chain(&e), "readiness check failed");
            Problem::unavailable("the database does not answer").into_response()
        }
    }
}

/// One log line per request: method, the matched route (never the raw path, which may carry a
/// token), status and time taken.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |m| m.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    if status >= 500 {
        tracing::warn!(%method, route, status, ms, "request");
    } else {
        tracing::info!(%method, route, status, ms, "request");
    }
    response
}

/// Binds `addr`.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves until `stop`, then stops accepting and lets requests in flight finish for up to
/// `http.shutdown_grace`.
pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) -> Result<(), ServeError> {
    let grace = state.config.http.shutdown_grace.to_std();
    let local = listener.local_addr().ok();
    tracing::info!(address = ?local, "HTTP server listening");
    let app = router(state.with_local(local));
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result.map_err(ServeError::Serve),
        () = deadline => {
            tracing::warn!(grace_s = grace.as_secs(), "requests still in flight at the end of the grace period; closing");
            Ok(())
        }
    }
}

impl AppState {
    /// The same state, knowing the address it was bound to (for links when neither
    /// `http.public_url` nor `http.listen` is set: a test's port 0).
    fn with_local(self, local: Option<std::net::SocketAddr>) -> AppState {
        match Arc::try_unwrap(self.0) {
            Ok(mut shared) => {
                shared.local = local;
                AppState(Arc::new(shared))
            }
            Err(arc) => AppState(arc),
        }
    }
}

/// How long a request may take before it is answered 503 (a CSV upload streams within it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
