//! Sender backends: the one seam through which anything leaves Tangazo.
//!
//! A [`Sender`] takes a batch of rendered messages and returns one result per message, each
//! failure classified by the backend that saw it as transient (try again, perhaps after
//! `retry_after`) or permanent. Each backend is a folder (`file/`, `console/`) holding its
//! configuration, its implementation and its tests; [`registry`] is the one list of backends and
//! the only place that turns configuration into senders; [`limits`] is the rate, burst,
//! concurrency, timeout and retry block every backend shares. Depends on `domain` only.

pub mod africastalking;
pub mod console;
pub mod file;
pub mod gateway;
pub mod limits;
pub mod registry;
pub mod smtp;
pub mod twilio;
mod web;
pub mod webhook;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::domain::{Channel, EmailAddress, Locale, PhoneNumber, RecipientId, Rendered};
pub use console::ConsoleSender;
pub use file::FileSender;
pub use limits::{Limits, RetryPolicy};
pub use registry::{BuildContext, BuildError, SenderConfig, Senders};

/// Where a message goes, by channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Phone(PhoneNumber),
    Email(EmailAddress),
    /// A biller's webhook endpoint: the biller, and the endpoint registered for it (none when
    /// the biller has none: the file and console backends record such a message, the webhook
    /// backend refuses it).
    Endpoint {
        biller: RecipientId,
        endpoint: Option<Endpoint>,
    },
}

/// Where a webhook goes and the secrets it is signed with (never shown).
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: i64,
    pub url: String,
    /// The current secret, then the previous one while a rotation's overlap lasts.
    pub secrets: Vec<crate::domain::Secret>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Phone(p) => f.write_str(p.as_str()),
            Address::Email(e) => f.write_str(e.as_str()),
            Address::Endpoint { endpoint: Some(e), .. } => f.write_str(&e.url),
            Address::Endpoint { biller, endpoint: None } => write!(f, "{biller}"),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One message, rendered and addressed.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub idempotency_key: String,
    pub channel: Channel,
    /// E.164 number, email address, or the biller's recipient id for webhooks.
    pub to: Address,
    /// The notice kind (`reminder`) and the full notice (`reminder:24h`).
    pub kind: String,
    pub notice: String,
    /// The window the notice is about; none for a free-text broadcast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_id: Option<i64>,
    /// The ad-hoc broadcast this message belongs to, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
    pub revision: u32,
    pub locale: Locale,
    /// This attempt's number: 1 for the first.
    pub attempt: u32,
    /// An earlier attempt's worker died mid-send, so this message may have gone out already:
    /// a receiver may see it twice.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub possibly_duplicate: bool,
    /// The last real instant at which it may still be handed to a provider (its deadline).
    #[serde(skip)]
    pub not_after: Option<tokio::time::Instant>,
    /// The recipient's one-click unsubscribe token (emails): the SMTP backend puts it in the
    /// `List-Unsubscribe` URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<String>,
    #[serde(flatten)]
    /// Shared by every message of the same body, not copied into each.
    pub content: Arc<Rendered>,
}

impl Message {
    /// Past its deadline at `now`: it must not be handed to a provider any more.
    pub fn is_late(&self, now: tokio::time::Instant) -> bool {
        self.not_after.is_some_and(|t| t <= now)
    }
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub provider_id: Option<String>,
    /// When it was handed to the backend (set by [`send_on_time`]): the instant a message went,
    /// which in a paced batch is not when the batch finished.
    pub handed_at: Option<tokio::time::Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt: a timeout, a 4xx SMTP reply, HTTP 408/429/5xx.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The backend has stopped taking messages for a while (a provider's balance ran out): fail
    /// over at once, retry later, and raise an alarm an operator will see.
    #[error("{message}")]
    Paused {
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer, or a server error, after the request was sent: the provider may have
    /// accepted it. Retried on the schedule (not failed over at once), and the retry is
    /// flagged possibly duplicate.
    #[error("{message}")]
    Uncertain {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Never worth another attempt: an invalid number, a 5xx SMTP reply, other HTTP 4xx.
    #[error("{message}")]
    Permanent { message: String },
    /// The receiver says the endpoint is gone for good (HTTP 410): final, and the endpoint is
    /// disabled so nothing more is queued for it.
    #[error("{message}")]
    Gone { message: String },
    /// Not handed to the backend: its deadline came first (waiting for the rate, say).
    #[error("the deadline passed before it could be handed to a backend")]
    TooLate,
}

impl SendError {
    /// Worth another attempt, now or later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SendError::Transient { .. } | SendError::Uncertain { .. } | SendError::Paused { .. }
        )
    }
    /// Worth handing at once to the channel's next backend: surely not sent by this one.
    pub fn fails_over(&self) -> bool {
        matches!(self, SendError::Transient { .. } | SendError::Paused { .. })
    }
    /// The provider may have accepted it: another attempt may deliver it twice.
    pub fn may_have_been_sent(&self) -> bool {
        matches!(self, SendError::Uncertain { .. })
    }
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Transient { retry_after, .. }
            | SendError::Uncertain { retry_after, .. }
            | SendError::Paused { retry_after, .. } => *retry_after,
            SendError::Permanent { .. } | SendError::Gone { .. } | SendError::TooLate => None,
        }
    }
}

/// Sends through `sender` what is still on time and answers [`SendError::TooLate`] for the
/// rest, one result per message, in order. Backends that send a message at a time look again
/// once each has its connection, since a large batch may wait for them past a deadline.
pub async fn send_on_time(sender: &dyn Sender, batch: &[Message]) -> Vec<Result<Receipt, SendError>> {
    let now = tokio::time::Instant::now();
    let late: Vec<bool> = batch.iter().map(|m| m.is_late(now)).collect();
    let stamp = |results: Vec<Result<Receipt, SendError>>| -> Vec<Result<Receipt, SendError>> {
        results
            .into_iter()
            .map(|r| {
                r.map(|mut receipt| {
                    receipt.handed_at.get_or_insert(now);
                    receipt
                })
            })
            .collect()
    };
    if !late.contains(&true) {
        return stamp(sender.send(batch).await);
    }
    let live: Vec<Message> = batch
        .iter()
        .zip(&late)
        .filter(|(_, late)| !**late)
        .map(|(m, _)| m.clone())
        .collect();
    let mut sent = if live.is_empty() {
        Vec::new()
    } else {
        stamp(sender.send(&live).await)
    }
    .into_iter();
    late.iter()
        .map(|late| {
            if *late {
                Err(SendError::TooLate)
            } else {
                sent.next().unwrap_or_else(|| {
                    Err(SendError::Transient {
                        message: format!("{} returned no result", sender.name()),
                        retry_after: None,
                    })
                })
            }
        })
        .collect()
}

/// Installs rustls's aws-lc-rs provider for the process, once: every TLS connection (SMTP,
/// HTTP) uses it, and two providers would leave none chosen.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Already installed by the embedding program: that one stays.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

pub(crate) use crate::domain::error_chain;

/// A writer shared by the tasks that use it (the console backend's standard output).
pub type SharedWriter = Arc<std::sync::Mutex<dyn std::io::Write + Send>>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend. `send` returns exactly one result per message, in order.
pub trait Sender: Send + Sync {
    fn name(&self) -> &str;
    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>>;
    /// Checks the settings and that the far end answers, without sending anything to anyone;
    /// says what it found, or what is wrong.
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async { Ok("nothing to check".to_owned()) })
    }
}

/// `n` one-segment SMS for backend tests.
#[cfg(test)]
pub(crate) fn sample_sms(n: usize) -> Vec<Message> {
    use crate::domain::Encoding;
    (0..n)
        .map(|i| Message {
            idempotency_key: format!("w1.r1.announced.{i}.sms"),
            channel: Channel::Sms,
            to: Address::Phone(PhoneNumber::parse(&format!("07123456{:02}", i % 100)).expect("a valid number")),
            kind: "announced".into(),
            notice: "announced".into(),
            window_id: Some(1),
            broadcast: None,
            revision: 1,
            locale: Locale::En,
            attempt: 1,
            possibly_duplicate: false,
            not_after: None,
            unsubscribe: None,
            content: Arc::new(Rendered::Sms {
                body: format!("Message {i}"),
                encoding: Encoding::Gsm7,
                segments: 1,
            }),
        })
        .collect()
}
