//! The registry: the one list of backends, and the only place that turns configuration into
//! senders.
//!
//! A backend is a folder under `channels/` with a configuration struct implementing
//! [`Backend`]; adding one is that folder plus one line in `registry!` below. In the
//! configuration a backend is a table `[senders.NAME]` with `type = "…"`, the backend's own keys,
//! and the shared limits keys ([`super::limits::KEYS`]) beside them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::africastalking::AfricasTalkingConfig;
use super::console::ConsoleConfig;
use super::file::FileConfig;
use super::gateway::GatewayConfig;
use super::limits::{self, Limited, Limits, RetryPolicy, Share};
use super::smtp::SmtpConfig;
use super::twilio::TwilioConfig;
use super::webhook::WebhookConfig;
use super::{Sender, SharedWriter};
use crate::domain::Channel;

/// What every backend's configuration provides.
pub trait Backend {
    /// The limits this backend gets where the configuration sets none.
    fn default_limits(&self) -> Limits;
    /// Checks what serde cannot; the message names the key below `senders.NAME`.
    fn validate(&self) -> Result<(), String>;
    /// The sender, named `name`.
    fn build(&self, name: &str, context: &BuildContext) -> Result<Arc<dyn Sender>, String>;
}

/// What backends may need from the process that builds them.
#[derive(Clone)]
pub struct BuildContext {
    /// Where the `console` backend writes (standard output in the binary).
    pub console: SharedWriter,
}

impl BuildContext {
    /// Console output goes to `out`.
    pub fn with_console(out: impl std::io::Write + Send + 'static) -> BuildContext {
        BuildContext {
            console: Arc::new(std::sync::Mutex::new(out)),
        }
    }
}

/// Declares the backends: `"type" => Variant(ConfigType)`, one line each.
macro_rules! registry {
    ($($tag:literal => $variant:ident($config:ty)),* $(,)?) => {
        /// A backend's own settings, selected by `type`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum BackendConfig {
            $(#[serde(rename = $tag)] $variant($config),)*
        }

        impl BackendConfig {
            fn backend(&self) -> &dyn Backend {
                match self {
                    $(BackendConfig::$variant(c) => c,)*
                }
            }
        }
    };
}

registry! {
    "file" => File(FileConfig),
    "console" => Console(ConsoleConfig),
    "smtp" => Smtp(SmtpConfig),
    "twilio" => Twilio(TwilioConfig),
    "africastalking" => AfricasTalking(AfricasTalkingConfig),
    "http" => Gateway(GatewayConfig),
    "webhook" => Webhook(WebhookConfig),
}

/// One `[senders.NAME]` table: the backend's settings and its limits, side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SenderConfig {
    #[serde(flatten)]
    pub backend: BackendConfig,
    #[serde(flatten)]
    pub limits: Limits,
}

// By hand because serde cannot deny unknown fields across flattened parts: the limits keys
// are taken out first, and each part then refuses what it does not know.
impl<'de> Deserialize<'de> for SenderConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let mut limits = toml::Table::new();
        for key in limits::KEYS {
            if let Some(v) = table.remove(key) {
                limits.insert(key.to_owned(), v);
            }
        }
        let backend = BackendConfig::deserialize(toml::Value::Table(table)).map_err(serde::de::Error::custom)?;
        let limits = Limits::deserialize(toml::Value::Table(limits)).map_err(serde::de::Error::custom)?;
        Ok(SenderConfig { backend, limits })
    }
}

impl SenderConfig {
    /// The limits in force: the configured ones over the backend's defaults.
    pub fn effective_limits(&self) -> Limits {
        self.limits.or(&self.backend.backend().default_limits())
    }

    /// The backend alone, without its limits (for `senders check`).
    pub fn build_sender(&self, name: &str, context: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        self.validate()?;
        self.backend.backend().build(name, context)
    }

    /// Checks the backend's settings and its limits.
    pub fn validate(&self) -> Result<(), String> {
        self.backend.backend().validate()?;
        self.limits.validate()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("sender {name}: {message}")]
    Sender { name: String, message: String },
}

/// A built backend with the retry policy the dispatcher applies to what it fails.
#[derive(Clone)]
pub struct Route {
    pub sender: Arc<dyn Sender>,
    pub retry: RetryPolicy,
    /// Messages per second, where limited (for estimates).
    pub rate: Option<f64>,
}

/// The senders of every channel, in order of preference.
#[derive(Clone)]
pub struct Senders {
    routes: BTreeMap<Channel, Vec<Route>>,
    /// How many daemons share every backend's rate.
    share: Share,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: BTreeMap<_, Vec<&str>> = self
            .routes
            .iter()
            .map(|(c, s)| (c, s.iter().map(|r| r.sender.name()).collect()))
            .collect();
        f.debug_struct("Senders").field("routes", &names).finish()
    }
}

impl Senders {
    /// Builds every configured backend once, held to its limits, and routes each channel to
    /// its list of sender names.
    pub fn build(
        senders: &BTreeMap<String, SenderConfig>,
        channels: &BTreeMap<Channel, Vec<String>>,
        context: &BuildContext,
    ) -> Result<Senders, BuildError> {
        super::install_tls_provider();
        let share = Share::default();
        let mut built: BTreeMap<&str, Route> = BTreeMap::new();
        for (name, config) in senders {
            let fail = |message: String| BuildError::Sender {
                name: name.clone(),
                message,
            };
            config.validate().map_err(fail)?;
            let limits = config.effective_limits();
            let sender = config.backend.backend().build(name, context).map_err(fail)?;
            built.insert(
                name,
                Route {
                    sender: Limited::wrap(sender, &limits, &share),
                    retry: limits.retry_policy(),
                    rate: limits.rate,
                },
            );
        }
        let mut routes = BTreeMap::new();
        for (channel, names) in channels {
            let list = names
                .iter()
                .map(|n| {
                    built.get(n.as_str()).cloned().ok_or_else(|| BuildError::Sender {
                        name: n.clone(),
                        message: "is not defined".into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            routes.insert(*channel, list);
        }
        Ok(Senders { routes, share })
    }

    /// Routes made by hand (tests, benchmarks), each backend with the dispatcher's retries.
    pub fn from_routes(routes: BTreeMap<Channel, Vec<Arc<dyn Sender>>>) -> Senders {
        let routes = routes
            .into_iter()
            .map(|(c, list)| {
                let list = list
                    .into_iter()
                    .map(|sender| Route {
                        sender,
                        retry: RetryPolicy::default(),
                        rate: None,
                    })
                    .collect();
                (c, list)
            })
            .collect();
        Senders {
            routes,
            share: Share::default(),
        }
    }

    /// How many daemons share the backends' rates: each paces itself to its part.
    pub fn share(&self) -> &Share {
        &self.share
    }

    /// The rate of the channel's first backend, if limited.
    pub fn rate(&self, channel: Channel) -> Option<f64> {
        self.route(channel).first().and_then(|r| r.rate)
    }

    pub fn route(&self, channel: Channel) -> &[Route] {
        self.routes.get(&channel).map(Vec::as_slice).unwrap_or_default()
    }
}
