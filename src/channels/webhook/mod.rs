//! The `webhook` backend: billers' subscribed endpoints receive each event in the Standard
//! Webhooks envelope, signed.
//!
//! The body is the rendered `{"type", "data"}` with the `timestamp` of this attempt added; the
//! headers are `webhook-id` (the delivery's idempotency key: one per endpoint, the same on
//! every retry), `webhook-timestamp` and `webhook-signature` (one `v1,` signature per secret:
//! two during a rotation). `guard` keeps every request on public addresses, checked again at
//! connect time through the client's resolver. A 2xx is success; a redirect is not followed
//! and fails the attempt; 410 is final and disables the endpoint; 408, 429 and 5xx are retried
//! (a 5xx or a timeout flagged possibly duplicate); other 4xx are final. The whole request,
//! body read included, is bounded in time, and the response in size.

pub mod guard;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::registry::{Backend, BuildContext};
use super::web;
use super::{Address, BoxFuture, Limits, Message, Receipt, SendError, Sender};
use crate::domain::{Rendered, Span};
use guard::{Guard, Subnet, SystemLookup};

/// `type = "webhook"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Accept `http://` endpoints (tests, receivers on the premises); https only otherwise.
    #[serde(default)]
    pub allow_http: bool,
    /// Subnets endpoints may be in although they are not public (`10.20.0.0/16`, `127.0.0.1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Requests in flight at once, each over a connection kept alive [default: 64].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

impl WebhookConfig {
    /// The SSRF guard these settings make, on the system's resolver.
    pub fn guard(&self) -> Result<Guard, String> {
        let allow = self
            .allow
            .iter()
            .map(|s| s.parse::<Subnet>().map_err(|e| format!("allow: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Guard::new(self.allow_http, allow, Arc::new(SystemLookup)))
    }
}

/// The guard of the first configured webhook backend, or the default rules: what registering
/// an endpoint checks URLs with (`tangazo webhooks add`, `POST /v1/subscriptions`).
pub fn configured_guard(senders: &std::collections::BTreeMap<String, super::SenderConfig>) -> Result<Guard, String> {
    senders
        .values()
        .find_map(|s| match &s.backend {
            super::registry::BackendConfig::Webhook(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_default()
        .guard()
}

/// Sends an endpoint a signed `webhook.test` event now and says how it answered.
pub async fn send_test(
    guard: Guard,
    endpoint: super::Endpoint,
    biller: crate::domain::RecipientId,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Receipt, SendError> {
    let id = endpoint.id;
    let payload =
        serde_json::json!({"type": "webhook.test", "data": {"endpoint_id": id, "message": "a test from Tangazo"}});
    let sender =
        WebhookSender::new("test", guard, REQUEST_TIMEOUT, 1).map_err(|message| SendError::Permanent { message })?;
    let sent = sender
        .send(&[event(
            endpoint,
            biller,
            format!("test.e{id}.{}", now.timestamp_millis()),
            "test",
            payload,
        )])
        .await;
    first(sent)
}

/// Sends events again to one endpoint, in order, each under the `webhook-id` it first went out
/// with (so a receiver that has it drops it), stopping at the first failure. Returns how many
/// went, and the failure if one stopped it.
pub async fn replay(
    guard: Guard,
    endpoint: super::Endpoint,
    biller: crate::domain::RecipientId,
    events: Vec<(String, String, serde_json::Value)>,
) -> Result<(usize, Option<SendError>), String> {
    let sender = WebhookSender::new("replay", guard, REQUEST_TIMEOUT, 1)?;
    let mut sent = 0;
    for (key, kind, payload) in events {
        let id = format!("{key}.e{}", endpoint.id);
        if let Err(e) = first(
            sender
                .send(&[event(endpoint.clone(), biller, id, &kind, payload)])
                .await,
        ) {
            return Ok((sent, Some(e)));
        }
        sent += 1;
    }
    Ok((sent, None))
}

fn event(
    endpoint: super::Endpoint,
    biller: crate::domain::RecipientId,
    id: String,
    kind: &str,
    payload: serde_json::Value,
) -> Message {
    Message {
        idempotency_key: id,
        channel: crate::domain::Channel::Webhook,
        to: Address::Endpoint {
            biller,
            endpoint: Some(endpoint),
        },
        kind: kind.to_owned(),
        notice: kind.to_owned(),
        window_id: None,
        broadcast: None,
        revision: 0,
        locale: crate::domain::Locale::En,
        attempt: 1,
        possibly_duplicate: false,
        not_after: None,
        unsubscribe: None,
        content: Arc::new(Rendered::Webhook { payload }),
    }
}

fn first(results: Vec<Result<Receipt, SendError>>) -> Result<Receipt, SendError> {
    results.into_iter().next().unwrap_or_else(|| {
        Err(SendError::Permanent {
            message: "the sender gave no result".into(),
        })
    })
}

/// How long one request may take, body included, unless `timeout` says otherwise.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl Backend for WebhookConfig {
    fn default_limits(&self) -> Limits {
        Limits {
            concurrency: Some(8),
            timeout: Some(Span::from_secs(60)),
            retry: Some(
                ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            ),
            jitter: Some(0.2),
            retry_after_max: Some(Span::from_secs(3600)),
            ..Limits::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        web::connections(self.connections)?;
        self.guard().map(|_| ())
    }

    fn build(&self, name: &str, _: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        let connections = web::connections(self.connections)?;
        Ok(Arc::new(WebhookSender::new(
            name,
            self.guard()?,
            REQUEST_TIMEOUT,
            connections,
        )?))
    }
}

pub struct WebhookSender {
    name: String,
    guard: Guard,
    client: reqwest::Client,
    requests: web::Requests,
}

impl WebhookSender {
    /// A sender whose requests go only where `guard` allows, each within `timeout`, at most
    /// `connections` at once.
    pub fn new(name: &str, guard: Guard, timeout: Duration, connections: usize) -> Result<WebhookSender, String> {
        // Every connection goes through the guard: it is the client's resolver.
        let client = web::build(web::builder(timeout, connections).dns_resolver(Arc::new(guard.clone())))?;
        Ok(WebhookSender {
            name: name.to_owned(),
            guard,
            client,
            requests: web::Requests::new(connections),
        })
    }

    async fn send_one(&self, m: &Message) -> Result<Receipt, SendError> {
        let permanent = |message: String| SendError::Permanent { message };
        let Rendered::Webhook { payload } = &*m.content else {
            return Err(permanent(format!("{} sends webhooks only", self.name)));
        };
        let endpoint = match &m.to {
            Address::Endpoint { endpoint: Some(e), .. } => e,
            Address::Endpoint { biller, endpoint: None } => {
                return Err(permanent(format!(
                    "biller {biller} has no webhook endpoint: add one with `tangazo webhooks add`"
                )));
            }
            _ => return Err(permanent(format!("{} sends to webhook endpoints only", self.name))),
        };
        // A name is checked by the client's resolver when it connects; an address written in
        // the URL never reaches a resolver, so it is checked here.
        let url = self
            .guard
            .parse(&endpoint.url)
            .map_err(|e| permanent(format!("endpoint {}: {e}", endpoint.id)))?;
        if matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))) {
            self.guard
                .resolve(&url)
                .await
                .map_err(|e| permanent(format!("endpoint {}: {e}", endpoint.id)))?;
        }
        let now = chrono::Utc::now();
        let mut envelope = payload.clone();
        if let Some(object) = envelope.as_object_mut() {
            object.insert(
                "timestamp".to_owned(),
                serde_json::Value::String(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
        }
        let body = serde_json::to_vec(&envelope).map_err(|e| permanent(format!("cannot encode the event: {e}")))?;
        let keys = endpoint
            .secrets
            .iter()
            .map(sign::key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| permanent(format!("endpoint {}: {e}", endpoint.id)))?;
        let timestamp = now.timestamp();
        let signature = sign::signature(&keys, &m.idempotency_key, timestamp, &body);
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &m.idempotency_key)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| refused_or_unanswered(&self.name, endpoint.id, &e))?;
        let (status, retry_after, bytes) = web::read(response)
            .await
            .map_err(|e| refused_or_unanswered(&self.name, endpoint.id, &e))?;
        match status.as_u16() {
            200..=299 => Ok(Receipt::default()),
            300..=399 => Err(permanent(format!(
                "{}: endpoint {} answered a redirect ({}), which is not followed: register the final URL",
                self.name,
                endpoint.id,
                status.as_u16()
            ))),
            410 => Err(SendError::Gone {
                message: format!(
                    "{}: endpoint {} answered 410 Gone: it is disabled",
                    self.name, endpoint.id
                ),
            }),
            _ => Err(web::refused(status, retry_after, &bytes)),
        }
    }
}

/// A request that failed without an answer: refused by the guard at connect time (final), or
/// unanswered (retried).
fn refused_or_unanswered(backend: &str, endpoint: i64, e: &reqwest::Error) -> SendError {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<guard::Refused>() {
            return SendError::Permanent {
                message: format!("{backend}: endpoint {endpoint}: {refused}"),
            };
        }
        source = cause.source();
    }
    web::unanswered(backend, e)
}

impl Sender for WebhookSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        self.requests.each(batch, |m| self.send_one(m))
    }
}
