//! Configuration: one TOML file, environment overrides, command-line flags, validated at
//! start-up into a typed [`Config`].
//!
//! The commented example (`tangazo.example.toml`) is built into the binary: it is what
//! `tangazo init` writes and it supplies every default, so the two can never disagree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::broadcast::Costs;
use crate::channels::SenderConfig;
use crate::dispatch::DispatchConfig;
use crate::domain::{
    AudiencePolicy, Channel, ComponentId, ComponentNames, Policy, QuietHours, REDACTED, Secret, Span, Zone,
};

/// The documented example configuration, and the source of every default.
pub const EXAMPLE: &str = include_str!("../tangazo.example.toml");

const ENV_PREFIX: &str = "TANGAZO_";
/// Variables with the prefix that are command-line flags, not configuration keys.
const NOT_KEYS: [&str; 5] = ["CONFIG", "NOW", "LOG", "ACTOR", "LOG_FORMAT"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// A database URL. Shown (`Display`, `Debug`, serialisation) with any password redacted, in
/// the user part or a `password=` query parameter; [`DatabaseUrl::expose`] gives it whole.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(Secret::new(url))
    }

    /// The URL itself, password included: for connecting only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(self.expose()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(DatabaseUrl::new)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database_url: DatabaseUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    templates: Option<PathBuf>,
    service_name: String,
    default_zone: String,
    policy: RawPolicy,
    sms: RawSms,
    broadcast: RawBroadcast,
    costs: Costs,
    dispatch: RawDispatch,
    http: RawHttp,
    senders: BTreeMap<String, SenderConfig>,
    channels: BTreeMap<String, Vec<String>>,
    components: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    completed_grace: Span,
    customers: RawAudiencePolicy,
    billers: RawAudiencePolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudiencePolicy {
    reminders: Vec<Span>,
    quiet_hours: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    max_segments: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroadcast {
    confirm_above: u64,
    deadline: Span,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    batch_size: usize,
    batches_in_flight: usize,
    retry: Vec<Span>,
    lease: Span,
    tick: Span,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    public_url: String,
    body_limit: usize,
    rate: u32,
    burst: u32,
    shutdown_grace: Span,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_token: Option<Secret>,
}

/// The HTTP server's settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen; `None`: the daemon serves nothing.
    pub listen: Option<std::net::SocketAddr>,
    /// The base of links handed out; `None`: `http://{listen}`.
    pub public_url: Option<url::Url>,
    pub body_limit: usize,
    /// Requests per second per token, and the burst.
    pub rate: u32,
    pub burst: u32,
    pub shutdown_grace: Span,
    pub admin_token: Option<Secret>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub templates: Option<PathBuf>,
    pub service_name: String,
    pub default_zone: Zone,
    pub policy: Policy,
    /// The most segments one SMS may be billed as.
    pub max_sms_segments: usize,
    /// Broadcast audiences above this size need confirmation.
    pub confirm_above: u64,
    /// The default deadline of a free-text broadcast, from its start.
    pub broadcast_deadline: Span,
    pub costs: Costs,
    pub dispatch: DispatchConfig,
    pub http: HttpConfig,
    pub senders: BTreeMap<String, SenderConfig>,
    /// For each channel, the sender names in order of preference (never empty).
    pub channels: BTreeMap<Channel, Vec<String>>,
    pub components: BTreeMap<ComponentId, ComponentNames>,
    raw: RawConfig,
}

/// Values from command-line flags, which win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub templates: Option<PathBuf>,
}

impl Config {
    /// Each channel's first backend: the channel, the backend's name and its rate (where it
    /// has one), the inputs of the planner's capacity.
    pub fn first_backends(&self) -> Vec<(Channel, &str, Option<f64>)> {
        self.channels
            .iter()
            .filter_map(|(channel, names)| {
                let name = names.first()?;
                let rate = self.senders.get(name).and_then(|s| s.effective_limits().rate);
                Some((*channel, name.as_str(), rate))
            })
            .collect()
    }

    /// Loads `path` (a missing file is an error only when `required`), applies `TANGAZO_…`
    /// variables from `env`, then `overrides`, and validates the result.
    pub fn load(
        path: &Path,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let user = match std::fs::read_to_string(path) {
            Ok(text) => Some(parse_table(&text, &path.display().to_string())?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Config::from_parts(user, env, overrides)
    }

    /// The configuration built from defaults alone (plus `overrides`).
    pub fn defaults(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::from_parts(None, std::iter::empty(), overrides)
    }

    fn from_parts(
        user: Option<toml::Table>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = parse_table(EXAMPLE, "built-in defaults")?;
        if let Some(user) = user {
            for (key, value) in user {
                match (key.as_str(), table.get_mut(&key), value) {
                    ("components" | "senders", _, v) => {
                        table.insert(key, v);
                    }
                    (_, Some(toml::Value::Table(base)), toml::Value::Table(v)) => merge(base, v),
                    (_, _, v) => {
                        table.insert(key, v);
                    }
                }
            }
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if NOT_KEYS.contains(&rest) || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            // Only variables naming a top-level key are configuration; others with the prefix
            // (TANGAZO_TEST_POSTGRES, say) belong to someone else. Below the top level,
            // unknown keys are errors as in the file.
            if !table.contains_key(&path[0]) && path[0] != "templates" {
                continue;
            }
            set_path(&mut table, &path, env_value(&value)).map_err(|m| ConfigError::Syntax {
                origin: format!("environment variable {name}"),
                message: m,
            })?;
        }
        if let Some(url) = &overrides.database_url {
            table.insert("database_url".into(), toml::Value::String(url.clone()));
        }
        if let Some(dir) = &overrides.templates {
            table.insert("templates".into(), toml::Value::String(dir.display().to_string()));
        }
        // The path of the key at fault goes in front of serde's message: `dispatch.batch_size:
        // invalid type: string "x", expected usize`.
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().trim_end().to_owned();
            ConfigError::Syntax {
                origin: "configuration".into(),
                message: if path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                },
            }
        })?;
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let invalid = ConfigError::Invalid;
        let default_zone: Zone = raw
            .default_zone
            .parse()
            .map_err(|e| invalid(format!("default_zone: {e}")))?;
        if raw.service_name.trim().is_empty() {
            return Err(invalid("service_name must not be empty".into()));
        }
        if raw.database_url.expose().trim().is_empty() {
            return Err(invalid("database_url must not be empty".into()));
        }
        if raw.sms.max_segments == 0 {
            return Err(invalid("sms.max_segments must be at least 1".into()));
        }
        if raw.dispatch.batch_size == 0 {
            return Err(invalid("dispatch.batch_size must be at least 1".into()));
        }
        if !(1..=64).contains(&raw.dispatch.batches_in_flight) {
            return Err(invalid("dispatch.batches_in_flight must be between 1 and 64".into()));
        }
        if raw.dispatch.lease.secs() == 0 || raw.dispatch.tick.secs() == 0 {
            return Err(invalid(
                "dispatch.lease and dispatch.tick must be longer than 0s".into(),
            ));
        }
        let reminders = |audience: &str, p: &RawAudiencePolicy| {
            let quiet = QuietHours::parse_setting(&p.quiet_hours)
                .map_err(|e| invalid(format!("policy.{audience}.quiet_hours: {e}")))?;
            AudiencePolicy::new(p.reminders.clone())
                .map(|a| a.with_quiet_hours(quiet))
                .map_err(|e| invalid(format!("policy.{audience}.reminders: {e}")))
        };
        let policy = Policy {
            customers: reminders("customers", &raw.policy.customers)?,
            billers: reminders("billers", &raw.policy.billers)?,
            completed_grace: raw.policy.completed_grace,
        };
        let mut components = BTreeMap::new();
        if raw.components.is_empty() {
            return Err(invalid("[components] must name at least one component".into()));
        }
        for (id, names) in &raw.components {
            let cid: ComponentId = id.parse().map_err(|e| invalid(format!("components: {e}")))?;
            let name = |l: &str| {
                names
                    .get(l)
                    .filter(|n| !n.trim().is_empty())
                    .cloned()
                    .ok_or_else(|| invalid(format!("components.{id}: missing the '{l}' name")))
            };
            if let Some(extra) = names.keys().find(|k| !matches!(k.as_str(), "en" | "sw")) {
                return Err(invalid(format!("components.{id}: unknown locale '{extra}' (en, sw)")));
            }
            components.insert(
                cid,
                ComponentNames {
                    en: name("en")?,
                    sw: name("sw")?,
                },
            );
        }
        for (name, sender) in &raw.senders {
            sender.validate().map_err(|e| invalid(format!("senders.{name}.{e}")))?;
        }
        let c = &raw.costs;
        if [c.sms_segment, c.email, c.webhook]
            .iter()
            .any(|p| !(p.is_finite() && *p >= 0.0))
        {
            return Err(invalid("costs: prices must be zero or positive numbers".into()));
        }
        let http = http_config(&raw.http)?;
        let mut channels = BTreeMap::new();
        for (key, names) in &raw.channels {
            let channel: Channel = key.parse().map_err(|e| invalid(format!("channels: {e}")))?;
            if names.is_empty() {
                return Err(invalid(format!("channels.{key}: name at least one sender")));
            }
            if let Some(missing) = names.iter().find(|n| !raw.senders.contains_key(*n)) {
                return Err(invalid(format!(
                    "channels.{key}: no sender named '{missing}' (defined: {})",
                    raw.senders.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            channels.insert(channel, names.clone());
        }
        if let Some(c) = Channel::ALL.iter().find(|c| !channels.contains_key(c)) {
            return Err(invalid(format!(
                "channels.{c}: no sender is configured for this channel"
            )));
        }
        Ok(Config {
            database_url: raw.database_url.clone(),
            templates: raw.templates.clone(),
            service_name: raw.service_name.clone(),
            default_zone,
            policy,
            max_sms_segments: raw.sms.max_segments,
            confirm_above: raw.broadcast.confirm_above,
            broadcast_deadline: raw.broadcast.deadline,
            costs: raw.costs.clone(),
            dispatch: DispatchConfig {
                batch_size: raw.dispatch.batch_size,
                batches_in_flight: raw.dispatch.batches_in_flight,
                retry: raw.dispatch.retry.clone(),
                lease: raw.dispatch.lease,
                tick: raw.dispatch.tick,
            },
            http,
            senders: raw.senders.clone(),
            channels,
            components,
            raw,
        })
    }

    /// The effective configuration as TOML; every secret is redacted by its type.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }

    /// Whether `component` is configured.
    pub fn knows(&self, component: &ComponentId) -> bool {
        self.components.contains_key(component)
    }
}

fn http_config(raw: &RawHttp) -> Result<HttpConfig, ConfigError> {
    let invalid = ConfigError::Invalid;
    let listen = match raw.listen.trim() {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            invalid(format!(
                "http.listen: '{text}' is not an address and port like 127.0.0.1:8080 or [::1]:8080"
            ))
        })?),
    };
    let public_url = match raw.public_url.trim() {
        "" => None,
        text => {
            let url = url::Url::parse(text).map_err(|e| invalid(format!("http.public_url: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(invalid("http.public_url: give an http(s) URL with a host".into()));
            }
            Some(url)
        }
    };
    if raw.body_limit < 1024 {
        return Err(invalid("http.body_limit must be at least 1024 bytes".into()));
    }
    if raw.rate == 0 || raw.burst == 0 {
        return Err(invalid("http.rate and http.burst must be at least 1".into()));
    }
    if let Some(token) = &raw.admin_token
        && token.expose().len() < 32
    {
        return Err(invalid("http.admin_token must be at least 32 characters".into()));
    }
    Ok(HttpConfig {
        listen,
        public_url,
        body_limit: raw.body_limit,
        rate: raw.rate,
        burst: raw.burst,
        shutdown_grace: raw.shutdown_grace,
        admin_token: raw.admin_token.clone(),
    })
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
        origin: origin.to_owned(),
        message: e.to_string().trim().to_owned(),
    })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn env_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("'{p}' is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:[redacted]@host/db?password=[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let user = parse_table(text, "test")?;
        Config::from_parts(
            Some(user),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &Overrides::default(),
        )
    }

    #[test]
    fn the_example_is_the_default() {
        let c = Config::defaults(&Overrides::default()).unwrap();
        assert_eq!(c.database_url.expose(), "sqlite://tangazo.db");
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.components.len(), 6);
        assert_eq!(c.channels[&Channel::Sms], vec!["outbox".to_string()]);
    }

    #[test]
    fn file_then_env_then_flags() {
        let c = load(
            "service_name = \"Pesa\"\n[policy.customers]\nreminders = [\"48h\"]\n",
            &[
                ("TANGAZO_POLICY__COMPLETED_GRACE", "12h"),
                ("TANGAZO_DISPATCH__BATCH_SIZE", "42"),
                ("TANGAZO_CONFIG", "ignored.toml"),
                ("OTHER", "x"),
                ("TANGAZO_TEST_POSTGRES", "postgres://elsewhere"),
            ],
        )
        .unwrap();
        assert_eq!(c.service_name, "Pesa");
        assert_eq!(c.policy.customers.reminders(), [Span::hours(48)]);
        assert_eq!(c.policy.billers.reminders().len(), 4, "merged, not replaced");
        assert_eq!(c.policy.completed_grace, Span::hours(12));
        assert_eq!(c.dispatch.batch_size, 42);
        let c = Config::from_parts(
            None,
            [("TANGAZO_DATABASE_URL".to_string(), "sqlite://env.db".to_string())],
            &Overrides {
                database_url: Some("sqlite://flag.db".into()),
                templates: None,
            },
        )
        .unwrap();
        assert_eq!(c.database_url.expose(), "sqlite://flag.db");
    }

    #[test]
    fn components_replace_the_defaults() {
        let c = load("[components.ussd]\nen = \"USSD menu\"\nsw = \"Menyu ya USSD\"\n", &[]).unwrap();
        assert_eq!(c.components.len(), 1);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("colour = 1", "colour"),
            ("[policy]\ncompleted_grace = \"soon\"", "soon"),
            ("default_zone = \"Mars/Base\"", "Mars/Base"),
            ("[channels]\nsms = [\"smtp\"]", "no sender named 'smtp'"),
            ("[components.x]\nen = \"X\"", "components.x: missing the 'sw' name"),
            ("[senders.a]\ntype = \"carrier-pigeon\"", "carrier-pigeon"),
            ("[dispatch]\nbatch_size = 0", "batch_size"),
            ("[dispatch]\nbatch_size = \"many\"", "dispatch.batch_size: invalid type"),
            (
                "[policy.customers]\nreminders = [\"soon\"]",
                "policy.customers.reminders[0]",
            ),
            ("[senders.outbox]\ntype = \"file\"\ndir = 3", "senders.outbox"),
        ];
        for (text, needle) in cases {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/t"),
            "postgres://app:[redacted]@db:5432/t"
        );
        assert_eq!(redact_url("sqlite://tangazo.db"), "sqlite://tangazo.db");
        assert_eq!(
            redact_url("postgres://app@db/t?sslmode=require&password=hunter2"),
            "postgres://app@db/t?sslmode=require&password=[redacted]"
        );
        assert!(!format!("{:?}", DatabaseUrl::new("postgres://app:hunter2@db/t")).contains("hunter2"));
        let c = Config::from_parts(
            None,
            std::iter::empty(),
            &Overrides {
                database_url: Some("postgres://app:hunter2@db/t".into()),
                templates: None,
            },
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
