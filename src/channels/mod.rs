//! Sender backends: the one seam through which anything leaves Tangazo.
//!
//! A [`Sender`] takes a batch of rendered messages and returns one result per message, each
//! failure classified by the backend that saw it as transient (try again, perhaps after
//! `retry_after`) or permanent. The `type` tag of [`SenderConfig`] is the only registry of
//! backends; [`Senders::build`] is the only place that turns configuration into senders.
//! Depends on `domain`, `render` (the rendered content) and `config`.

mod console;
mod file;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, SenderConfig};
use crate::domain::{Channel, Locale};
use crate::render::Rendered;
pub use console::ConsoleSender;
pub use file::FileSender;

/// One message, rendered and addressed.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub idempotency_key: String,
    pub channel: Channel,
    /// E.164 number, email address, or the biller's recipient id for webhooks.
    pub to: String,
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
    #[serde(flatten)]
    pub content: Rendered,
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt: a timeout, a 4xx SMTP reply, HTTP 408/429/5xx.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Never worth another attempt: an invalid number, a 5xx SMTP reply, other HTTP 4xx.
    #[error("{message}")]
    Permanent { message: String },
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Transient { retry_after, .. } => *retry_after,
            SendError::Permanent { .. } => None,
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend. `send` returns exactly one result per message, in order.
pub trait Sender: Send + Sync {
    fn name(&self) -> &str;
    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>>;
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("sender {name}: {message}")]
    Sender { name: String, message: String },
}

/// A backend held to a rate: each batch waits until the previous ones would have gone out at
/// `rate` messages per second. Real time: the simulated clock of a rehearsal is not paced.
pub struct Paced {
    inner: Arc<dyn Sender>,
    rate: f64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Paced {
    pub fn new(inner: Arc<dyn Sender>, rate: f64) -> Paced {
        Paced {
            inner,
            rate,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

impl Sender for Paced {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        Box::pin(async move {
            let start = {
                let mut next = self.next.lock().await;
                let start = (*next).max(tokio::time::Instant::now());
                *next = start + Duration::from_secs_f64(batch.len() as f64 / self.rate);
                start
            };
            tokio::time::sleep_until(start).await;
            self.inner.send(batch).await
        })
    }
}

/// The senders of every channel, in order of preference.
#[derive(Clone)]
pub struct Senders {
    routes: BTreeMap<Channel, Vec<Arc<dyn Sender>>>,
    /// Messages per second of each channel's first backend, where limited (for estimates).
    rates: BTreeMap<Channel, f64>,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: BTreeMap<_, Vec<&str>> = self
            .routes
            .iter()
            .map(|(c, s)| (c, s.iter().map(|s| s.name()).collect()))
            .collect();
        f.debug_struct("Senders").field("routes", &names).finish()
    }
}

impl Senders {
    /// Builds every configured backend once and routes each channel to its list.
    pub fn build(config: &Config) -> Result<Senders, BuildError> {
        let mut built: BTreeMap<String, Arc<dyn Sender>> = BTreeMap::new();
        for (name, sender) in &config.senders {
            let s: Arc<dyn Sender> = match sender {
                SenderConfig::File { dir, .. } => Arc::new(FileSender::new(name, dir.clone())),
                SenderConfig::Console { .. } => Arc::new(ConsoleSender::new(name)),
            };
            let s = match sender.rate() {
                Some(rate) => Arc::new(Paced::new(s, rate)),
                None => s,
            };
            built.insert(name.clone(), s);
        }
        let mut routes = BTreeMap::new();
        for (channel, names) in &config.channels {
            let list = names
                .iter()
                .map(|n| {
                    built.get(n).cloned().ok_or_else(|| BuildError::Sender {
                        name: n.clone(),
                        message: "is not defined".into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            routes.insert(*channel, list);
        }
        let rates = config
            .channels
            .iter()
            .filter_map(|(c, names)| {
                names
                    .first()
                    .and_then(|n| config.senders.get(n))
                    .and_then(|s| s.rate())
                    .map(|r| (*c, r))
            })
            .collect();
        Ok(Senders { routes, rates })
    }

    /// Routes made by hand (tests, benchmarks).
    pub fn from_routes(routes: BTreeMap<Channel, Vec<Arc<dyn Sender>>>) -> Senders {
        Senders {
            routes,
            rates: BTreeMap::new(),
        }
    }

    /// The rate of the channel's first backend, if limited.
    pub fn rate(&self, channel: Channel) -> Option<f64> {
        self.rates.get(&channel).copied()
    }

    pub fn route(&self, channel: Channel) -> &[Arc<dyn Sender>] {
        self.routes.get(&channel).map(Vec::as_slice).unwrap_or_default()
    }
}
