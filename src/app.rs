//! Start-up: builds the parts of a running Tangazo — store, renderer, senders, dispatcher,
//! scheduler — from a [`Config`]. The command line, the demo, the tests and (later) the HTTP
//! server all get theirs here, so there is one way to wire the system.
//!
//! Depends on `config` and the parts it builds; prints nothing.

use std::sync::Arc;

use crate::channels::{BuildContext, BuildError, Senders};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::render::{RenderError, Renderer};
use crate::scheduler::Scheduler;
use crate::storage::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database URL names no supported database, or (for a command that only reads) none
    /// that exists.
    #[error(transparent)]
    DatabaseUrl(StoreError),
    #[error("cannot open database {url}")]
    Database { url: String, source: StoreError },
    #[error(transparent)]
    Templates(#[from] RenderError),
    /// The start-up check found templates that do not render: nothing is sent with them.
    #[error(
        "{first}{}; nothing was recorded or sent (`tangazo templates check` lists every problem)",
        if *more > 0 { format!(" (and {more} more problems)") } else { String::new() }
    )]
    TemplateCheck { first: RenderError, more: usize },
    #[error(transparent)]
    Senders(#[from] BuildError),
}

/// Opens and migrates the configured database, creating a SQLite file if there is none.
pub async fn store(config: &Config) -> Result<Store, StartupError> {
    opened(config, Store::connect(config.database_url.expose()).await)
}

/// Opens and migrates the configured database, which must exist: for commands that only read.
pub async fn existing_store(config: &Config) -> Result<Store, StartupError> {
    opened(config, Store::connect_existing(config.database_url.expose()).await)
}

fn opened(config: &Config, result: Result<Store, StoreError>) -> Result<Store, StartupError> {
    result.map_err(|e| match e {
        e @ (StoreError::UnsupportedUrl(_) | StoreError::NoDatabase(_)) => StartupError::DatabaseUrl(e),
        source => StartupError::Database {
            url: config.database_url.to_string(),
            source,
        },
    })
}

/// The configured templates (or the built-in ones) with the SMS segment limit.
pub fn renderer(config: &Config) -> Result<Renderer, StartupError> {
    Ok(
        Renderer::load(config.templates.as_deref(), &config.service_name, &config.components)?
            .with_sms_limit(config.max_sms_segments),
    )
}

/// The templates, refused unless every notice kind renders in every locale and channel (the
/// start-up check of the daemon, `run-once` and `broadcast`).
fn checked_renderer(config: &Config) -> Result<Renderer, StartupError> {
    let renderer = renderer(config)?;
    let mut problems = renderer.check(&config.components).problems.into_iter();
    match problems.next() {
        None => Ok(renderer),
        Some(first) => Err(StartupError::TemplateCheck {
            first,
            more: problems.count(),
        }),
    }
}

/// Every configured backend, held to its limits, routed per channel.
pub fn senders(config: &Config, context: &BuildContext) -> Result<Senders, StartupError> {
    Ok(Senders::build(&config.senders, &config.channels, context)?)
}

/// What sending needs from the configuration alone: the checked templates and the senders.
/// Built, and so checked, before any database is opened; the dispatcher and scheduler are made
/// from it without loading or checking anything again.
#[derive(Clone)]
pub struct Parts {
    pub renderer: Arc<Renderer>,
    pub senders: Senders,
}

/// The checked templates and the senders.
pub fn parts(config: &Config, context: &BuildContext) -> Result<Parts, StartupError> {
    Ok(Parts {
        renderer: Arc::new(checked_renderer(config)?),
        senders: senders(config, context)?,
    })
}

impl Parts {
    /// The dispatcher alone (`broadcast` works the queue without planning). `owner` names
    /// this process on the leases it takes.
    pub fn dispatcher(&self, config: &Config, store: &Store, owner: &str) -> Dispatcher {
        Dispatcher::new(
            store.clone(),
            Arc::clone(&self.renderer),
            self.senders.clone(),
            config.dispatch.clone(),
            config.components.clone(),
            owner.to_owned(),
        )
    }

    /// The scheduler with its dispatcher: what the daemon, `run-once` and the demo tick.
    pub fn scheduler(&self, config: &Config, store: &Store, owner: &str) -> Scheduler {
        Scheduler::new(
            store.clone(),
            config.policy.clone(),
            self.dispatcher(config, store, owner),
        )
    }
}

/// The dispatcher, from the configuration in one step.
pub fn dispatcher(
    config: &Config,
    store: &Store,
    context: &BuildContext,
    owner: &str,
) -> Result<Dispatcher, StartupError> {
    Ok(parts(config, context)?.dispatcher(config, store, owner))
}

/// The scheduler, from the configuration in one step.
pub fn scheduler(
    config: &Config,
    store: &Store,
    context: &BuildContext,
    owner: &str,
) -> Result<Scheduler, StartupError> {
    Ok(parts(config, context)?.scheduler(config, store, owner))
}

/// A lease owner name for this process: `tag@host:pid`.
pub fn owner(tag: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{tag}@{host}:{}", std::process::id())
}
