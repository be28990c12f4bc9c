//! The command line: parses arguments, loads configuration, wires the parts together and
//! prints results. The only module that uses `anyhow` freely and the only one that prints.
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad usage or bad input (clap's own usage
//! errors are 2 as well).

// The one module that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// `println!` for command output. A closed standard output (`tangazo … | head`) ends the
/// command quietly with exit 0 (`Failure::Closed`) rather than a panic; so the enclosing
/// function returns a `CliResult`.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` for command output, as `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))?
    };
}

/// `eprintln!` that never panics: on a closed standard error the line is lost.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod billers;
mod broadcast;
mod demo;
mod ops;
mod recipients;
mod serve;
mod webhooks;
mod windows;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::app::{self, StartupError};
use crate::channels::{BuildContext, Senders};
use crate::clock::Clock;
use crate::config::{Config, Overrides};
use crate::domain::parse_instant;
use crate::render::Renderer;
use crate::storage::Store;

/// Tangazo tells people, in their language and time zone, that a service is going down for
/// planned maintenance, reminds them, and tells them when it is back.
///
/// A typical day: `tangazo window add …` records a window; `tangazo daemon` announces it,
/// sends the reminders (by default 72h, 24h and 1h before; a week for billers), the start,
/// any change, and — once you run `tangazo window complete` — the all-clear.
/// `tangazo demo` replays the April 2015 M-PESA migration weekend end to end.
#[derive(Debug, Parser)]
#[command(name = "tangazo", version, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: ./tangazo.toml, if it exists]
    #[arg(long, global = true, env = "TANGAZO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://FILE or postgres://USER@HOST:PORT/DB [default: sqlite://tangazo.db]
    #[arg(long, global = true, env = "TANGAZO_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
    /// Folder of templates overriding the built-in ones
    #[arg(long, global = true, env = "TANGAZO_TEMPLATES", value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Pretend it is this instant (RFC 3339, or YYYY-MM-DD HH:MM in the default zone): for
    /// rehearsals and tests. The daemon starts its clock here and lets it run.
    #[arg(long, global = true, env = "TANGAZO_NOW", value_name = "TIME")]
    pub now: Option<String>,
    /// Print listings and summaries as JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is making a change, for the window history [default: $USER]
    #[arg(long, global = true, env = "TANGAZO_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented configuration file (./tangazo.toml or --config)
    Init {
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
    },
    /// Configuration commands
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Record and change maintenance windows
    #[command(subcommand)]
    Window(windows::WindowCommand),
    /// Import and manage customers and billers
    #[command(subcommand)]
    Recipients(recipients::RecipientsCommand),
    /// Template commands
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Sender backends
    #[command(subcommand)]
    Senders(SendersCommand),
    /// Billers who use the API: add (prints an API token once), rotate-token, list
    #[command(subcommand)]
    Billers(billers::BillersCommand),
    /// Billers' webhook endpoints: register, list, remove, rotate secrets, test, enable
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Send an ad-hoc notice (a window's, or a free message) to a filtered audience
    ///
    /// Idempotent by --name: running the same broadcast again sends nothing twice. --dry-run
    /// records nothing and prints counts, SMS segments, cost, time and samples. Audiences
    /// above broadcast.confirm_above need --yes. --canary sends to seed addresses first.
    #[command(verbatim_doc_comment)]
    Broadcast(broadcast::BroadcastArgs),
    /// Print a window's notice exactly as it would go out (SMS: text, encoding, segments)
    Preview {
        #[arg(long, value_name = "ID")]
        window: i64,
        /// announced, reminder:24h, started, rescheduled, cancelled, completed
        #[arg(long, value_name = "KIND[:OFFSET]")]
        notice: String,
        /// sms, email or webhook
        #[arg(long, default_value = "sms")]
        channel: String,
        /// en or sw [default: the recipient's, else en]
        #[arg(long)]
        locale: Option<String>,
        /// The recipient's zone [default: the recipient's, else the window's]
        #[arg(long)]
        zone: Option<String>,
        /// customer or biller: whose wording [default: the recipient's, else customer]
        #[arg(long)]
        audience: Option<String>,
        /// Render for this recipient (phone, email or id): their audience, language and zone
        #[arg(long, value_name = "PHONE|EMAIL|ID")]
        recipient: Option<String>,
    },
    /// One scheduler tick: start/complete windows, plan due notices, expire late ones, send due ones
    RunOnce,
    /// Tick until SIGINT/SIGTERM (one daemon per SQLite file; several may share PostgreSQL)
    Daemon {
        /// Seconds between ticks [default: dispatch.tick from the configuration]
        #[arg(long, value_name = "SECONDS")]
        tick: Option<u64>,
        /// Also serve the HTTP side here (e.g. 127.0.0.1:8080) [default: http.listen; unset:
        /// none]
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
    },
    /// Serve the HTTP side alone: billers' API, operator API, status page, feeds, callbacks
    ///
    /// Routes (see GET /openapi.json): / (status page, ?lang=sw, ?tz=Europe/London),
    /// /v1/windows, /calendar.ics, /feed.atom, /v1/subscriptions (billers' bearer token),
    /// /v1/admin/… (http.admin_token), /callbacks/… (SMS providers), /unsubscribe/…,
    /// /healthz, /readyz, /metrics. Stops on SIGINT/SIGTERM after requests in flight finish.
    #[command(verbatim_doc_comment)]
    Serve {
        /// Listen here [default: http.listen]
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        /// Print the callback URLs to give Africa's Talking and Twilio, and exit
        #[arg(long)]
        print_callback_urls: bool,
    },
    /// Inspect the delivery ledger, and pause or resume a window's sending
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// The processes sending from this database (daemons, and run-once or broadcast while they
    /// run): which one leads (plans and moves windows on), when each was last seen, and how
    /// fast each is sending. Each takes an even part of every backend's rate
    Daemons,
    /// Replay the April 2015 M-PESA migration weekend in ./tangazo-demo (SQLite, file outbox)
    Demo {
        /// Folder for the demo's database, configuration and outbox (recreated on each run)
        #[arg(long, default_value = "tangazo-demo")]
        dir: PathBuf,
        /// How many customers to generate
        #[arg(long, default_value_t = 3000)]
        customers: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted)
    Check,
}

#[derive(Debug, Subcommand)]
pub enum SendersCommand {
    /// Check each configured backend's settings and that it answers (an SMTP greeting, the
    /// SMS provider's account), without sending anything to anyone; exit 2 if one fails
    Check,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Render every notice kind × channel × locale against a sample; exit 2 naming any failure
    Check,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Counts by notice, channel and state, notices skipped or superseded as a whole, and alarms
    Summary {
        /// Only this window
        #[arg(long, value_name = "ID")]
        window: Option<i64>,
    },
    /// A window's deliveries one by one: recipient (masked), notice, channel, attempts, last
    /// error, and whether it may have gone out twice
    List {
        #[arg(long, value_name = "ID")]
        window: i64,
        /// Only this state: pending, claimed, sent, failed, expired, superseded
        #[arg(long)]
        state: Option<String>,
    },
    /// Every attempt to hand one delivery to a backend: when, which backend, how it went, the
    /// provider's status and message id, how long it took, the error (addresses masked)
    Attempts {
        /// The delivery's id (see `tangazo deliveries list`)
        id: i64,
    },
    /// Put a window's failed (or expired) deliveries back in the queue where their deadline is
    /// still ahead, after fixing what made them fail; the daemon or run-once sends them
    Retry {
        #[arg(long, value_name = "ID")]
        window: i64,
        /// Which deliveries: failed or expired
        #[arg(long, default_value = "failed")]
        state: String,
        /// Say what would be re-queued and what is too late, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop every daemon sending a window's deliveries (planning goes on; what reaches its
    /// deadline while paused expires), until `deliveries resume`
    Pause {
        #[arg(long, value_name = "ID")]
        window: i64,
    },
    /// Let the daemons send a paused window's deliveries again
    Resume {
        #[arg(long, value_name = "ID")]
        window: i64,
    },
}

/// Writes command output; a closed standard output is `Failure::Closed`.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> CliResult {
    use std::io::Write as _;
    match std::io::stdout().lock().write_fmt(args) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
        Err(e) => Err(Failure::Runtime(
            anyhow::Error::new(e).context("writing to standard output"),
        )),
    }
}

/// Writes to standard error, dropping the line if it cannot.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// A failure and the exit code it deserves.
#[derive(Debug)]
pub enum Failure {
    /// Standard output was closed by its reader (`| head`): stop quietly, exit 0.
    Closed,
    /// Bad usage or bad input: exit 2.
    Input(anyhow::Error),
    /// Anything else: exit 1.
    Runtime(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Runtime(e.into())
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;

/// Marks an error as the user's input: exit 2.
pub fn bad_input(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Input(e.into())
}

/// `bad_input` with the name of the flag or field at fault in front.
pub fn bad_field<E: std::fmt::Display>(field: &'static str) -> impl Fn(E) -> Failure {
    move |e| Failure::Input(anyhow::anyhow!("{field}: {e}"))
}

/// The window `id` names: one that does not exist is the user's input (naming `flag`); a
/// database failure is a runtime one, with its causes.
pub async fn window_arg(store: &Store, id: i64, flag: &'static str) -> CliResult<crate::domain::Window> {
    match store.window(crate::domain::WindowId(id)).await {
        Ok(w) => Ok(w),
        Err(e @ crate::storage::StoreError::NoSuchWindow(_)) => Err(bad_field(flag)(e)),
        Err(e) => Err(e.into()),
    }
}

/// What every command needs, built once from the global flags.
pub struct Ctx {
    pub cli_json: bool,
    pub config: Config,
    pub clock: Clock,
    pub actor: String,
    database_override: bool,
}

impl Ctx {
    fn new(cli: &Cli) -> CliResult<Ctx> {
        let default_path = PathBuf::from("tangazo.toml");
        let (path, required) = match &cli.config {
            Some(p) => (p.clone(), true),
            None => (default_path, false),
        };
        let overrides = Overrides {
            database_url: cli.database.clone(),
            templates: cli.templates.clone(),
        };
        let config = Config::load(&path, required, std::env::vars(), &overrides).map_err(bad_input)?;
        let clock = match &cli.now {
            Some(text) => Clock::Fixed(parse_instant(text, config.default_zone).map_err(bad_field("--now"))?),
            None => Clock::System,
        };
        let actor = cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "operator".to_owned());
        Ok(Ctx {
            cli_json: cli.json,
            config,
            clock,
            actor,
            database_override: cli.database.is_some(),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The database, created if there is none: for commands that record something.
    pub async fn store(&self) -> CliResult<Store> {
        app::store(&self.config).await.map_err(|e| self.startup_failure(e))
    }

    /// The database, which must exist: for commands that only read (or change what is there).
    pub async fn existing_store(&self) -> CliResult<Store> {
        app::existing_store(&self.config)
            .await
            .map_err(|e| self.startup_failure(e))
    }

    pub fn renderer(&self) -> CliResult<Renderer> {
        app::renderer(&self.config).map_err(|e| self.startup_failure(e))
    }

    pub fn senders(&self) -> CliResult<Senders> {
        app::senders(&self.config, &console()).map_err(|e| self.startup_failure(e))
    }

    /// The checked templates and the senders: refused (exit 2, naming the file) before any
    /// database is opened unless every template renders.
    pub fn parts(&self) -> CliResult<app::Parts> {
        app::parts(&self.config, &console()).map_err(|e| self.startup_failure(e))
    }

    /// Bad configuration, templates or a database URL of the wrong kind are the user's input
    /// (exit 2); a database that cannot be opened is a runtime failure (exit 1).
    fn startup_failure(&self, e: StartupError) -> Failure {
        match e {
            e @ StartupError::DatabaseUrl(_) => bad_field::<_>(if self.database_override {
                "--database"
            } else {
                "database_url"
            })(e),
            StartupError::Database { url, source } => {
                Failure::Runtime(anyhow::Error::new(source).context(format!("cannot open database {url}")))
            }
            e @ (StartupError::Templates(_) | StartupError::TemplateCheck { .. } | StartupError::Senders(_)) => {
                bad_input(e)
            }
        }
    }

    pub fn print_json(&self, value: &impl serde::Serialize) -> CliResult {
        outln!("{}", serde_json::to_string_pretty(value).context("encoding JSON")?);
        Ok(())
    }
}

/// The console backend prints on standard output.
pub fn console() -> BuildContext {
    BuildContext::with_console(std::io::stdout())
}

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Closed) => ExitCode::SUCCESS,
        Err(Failure::Input(e)) => {
            errln!("error: {}", crate::domain::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            errln!("error: {}", crate::domain::error_chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    if let Command::Demo { dir, customers } = &cli.command {
        return demo::run(dir, *customers, cli.json).await;
    }
    let ctx = Ctx::new(&cli)?;
    match cli.command {
        Command::Init { force } => ops::init(cli.config.as_deref(), force),
        Command::Config(ConfigCommand::Check) => ops::config_check(&ctx),
        Command::Window(c) => windows::run(&ctx, c).await,
        Command::Recipients(c) => recipients::run(&ctx, c).await,
        Command::Webhooks(c) => webhooks::run(&ctx, c).await,
        Command::Billers(c) => billers::run(&ctx, c).await,
        Command::Senders(SendersCommand::Check) => ops::senders_check(&ctx).await,
        Command::Templates(TemplatesCommand::Check) => ops::templates_check(&ctx),
        Command::Broadcast(args) => broadcast::run(&ctx, args).await,
        Command::Preview {
            window,
            notice,
            channel,
            locale,
            zone,
            audience,
            recipient,
        } => {
            let view = ops::View {
                locale: locale.as_deref(),
                zone: zone.as_deref(),
                audience: audience.as_deref(),
                recipient: recipient.as_deref(),
            };
            ops::preview(&ctx, window, &notice, &channel, view).await
        }
        Command::RunOnce => ops::run_once(&ctx).await,
        Command::Daemon { tick, listen } => ops::daemon(&ctx, tick, listen.as_deref(), cli.now.is_some()).await,
        Command::Serve {
            listen,
            print_callback_urls,
        } => serve::run(&ctx, listen.as_deref(), print_callback_urls, cli.now.is_some()).await,
        Command::Deliveries(DeliveriesCommand::Summary { window }) => ops::summary(&ctx, window).await,
        Command::Deliveries(DeliveriesCommand::Attempts { id }) => ops::attempts(&ctx, id).await,
        Command::Deliveries(DeliveriesCommand::List { window, state }) => {
            ops::list(&ctx, window, state.as_deref()).await
        }
        Command::Deliveries(DeliveriesCommand::Retry { window, state, dry_run }) => {
            ops::retry(&ctx, window, &state, dry_run).await
        }
        Command::Deliveries(DeliveriesCommand::Pause { window }) => ops::pause(&ctx, window, true).await,
        Command::Deliveries(DeliveriesCommand::Resume { window }) => ops::pause(&ctx, window, false).await,
        Command::Daemons => ops::daemons(&ctx).await,
        Command::Demo { .. } => Ok(()),
    }
}
